"""``compare`` with repeated seeds and a reference, from the command line; same seed -> same metrics."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_retrieval.callbacks import RetrievalEvaluation
from lightning_retrieval.compare import main as compare
from lightning_retrieval.data import MovieLensSource, RetrievalDataModule
from lightning_retrieval.tasks import RetrievalTask

from conftest import run_cli

pytestmark = pytest.mark.slow

# no logger / checkpoint paths: the run's files follow trainer.default_root_dir, which compare sets per seed
TINY_TOWER = """
seed_everything: 0
trainer:
  max_epochs: 1
  limit_train_batches: 3
  num_sanity_val_steps: 0
  enable_model_summary: false
  callbacks:
    - class_path: retrieval_evaluation
      init_args: {ks: [10, 20, 50]}
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {monitor: val/recall@50, mode: max, save_last: true}
model:
  class_path: retrieval
  init_args: {embedding_dim: 16}
data:
  max_history: 20
  batch_size: 256
"""
TINY_POPULARITY = """
seed_everything: 0
trainer:
  callbacks:
    - class_path: retrieval_evaluation
      init_args: {ks: [10, 20, 50]}
model:
  class_path: popularity
"""


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """``compare tiny_tower tiny_popularity --seeds 0 1 --reference tiny_popularity`` run once from the CLI."""
    cwd = tmp_path_factory.mktemp("compare")
    (cwd / "tiny_tower.yaml").write_text(TINY_TOWER)
    (cwd / "tiny_popularity.yaml").write_text(TINY_POPULARITY)
    args = ["compare", "tiny_tower.yaml", "tiny_popularity.yaml", "--seeds", "0", "1"]
    args += ["--reference", "tiny_popularity", "--resamples", "500", "--output", "out/table.md"]
    run_cli(*args, "--", "--trainer.limit_val_batches=1.0", cwd=cwd)
    return cwd


def test_every_seed_is_a_run_of_its_own_with_per_user_files(compared):
    for name in ("tiny_tower", "tiny_popularity"):
        for seed in (0, 1):
            run = compared / "runs" / name / f"seed_{seed}"
            assert list(run.rglob("per_user_test.parquet")), run
            config = next(run.rglob("config.yaml")).read_text()
            assert f"seed_everything: {seed}" in config
    towers = [next((compared / f"runs/tiny_tower/seed_{s}").rglob("per_user_test.parquet")) for s in (0, 1)]
    a, b = (pd.read_parquet(p)["recall@50"].to_numpy() for p in towers)
    assert not np.array_equal(a, b)  # the seed changes the model (weights, shuffling, negatives)


def test_table_has_intervals_that_contain_the_means_and_paired_differences(compared):
    table = pd.read_csv(compared / "out/table.csv").set_index("config")
    for metric in ("recall@20", "recall@50", "ndcg@50", "hit_rate@50", "topic_diversity@50"):
        low, high = table[f"{metric}_ci95_low"], table[f"{metric}_ci95_high"]
        assert ((low <= table[metric]) & (table[metric] <= high)).all(), metric
        assert (high > low).any()
    assert table.loc["tiny_tower", "seeds"] == 2
    # the cell is the mean over seeds of the logged metric
    cards = [pd.read_json(p, typ="series") for p in (compared / "runs/tiny_tower").rglob("result_card_test.json")]
    assert table.loc["tiny_tower", "recall@50"] == pytest.approx(np.mean([c["metrics"]["recall@50"] for c in cards]))
    for metric in ("recall@50", "ndcg@50"):
        row = table.loc["tiny_tower"]
        assert row[f"{metric}_diff"] == pytest.approx(row[metric] - table.loc["tiny_popularity", metric])
        assert row[f"{metric}_diff_ci95_low"] <= row[f"{metric}_diff"] <= row[f"{metric}_diff_ci95_high"]
        assert 0 < row[f"{metric}_p"] <= 1
        assert pd.isna(table.loc["tiny_popularity", f"{metric}_diff"])  # the reference itself
    # 3 training batches leave the tower far below popularity: the paired test must see it
    assert table.loc["tiny_tower", "recall@50_diff_ci95_high"] < 0 and table.loc["tiny_tower", "recall@50_p"] < 0.01
    markdown = (compared / "out/table.md").read_text()
    assert "--seeds 0 1 --reference tiny_popularity" in markdown and "95% interval" in markdown
    assert "Δ recall@50 vs tiny_popularity" in markdown and " *" in markdown
    assert {p.name for p in (compared / "out").glob("*.png")} >= {"table_recall_at_k.png", "table_segments.png"}


def test_runs_reads_repeated_runs_and_identical_runs_are_not_different(compared, tmp_path):
    """``--runs DIR`` with seed_* subdirectories; a copy of the reference's runs differs from it by exactly 0, p = 1."""
    copy = tmp_path / "popularity_copy"
    shutil.copytree(compared / "runs/tiny_popularity", copy)
    output = tmp_path / "table.md"
    runs = [str(compared / "runs/tiny_tower"), str(compared / "runs/tiny_popularity"), str(copy)]
    compare(["--runs", *runs, "--reference", "tiny_popularity", "--resamples", "300", "--output", str(output)])
    table = pd.read_csv(output.with_suffix(".csv")).set_index("config")
    first = pd.read_csv(compared / "out/table.csv").set_index("config")
    assert table.loc["tiny_tower", "seeds"] == 2
    assert table.loc["tiny_tower", "recall@50"] == pytest.approx(first.loc["tiny_tower", "recall@50"])
    assert table.loc["popularity_copy", "recall@50_diff"] == 0.0
    assert table.loc["popularity_copy", "recall@50_p"] == 1.0
    assert "popularity_copy | PopularityRetrieval" in output.read_text()


def _tiny_fit_metrics(tmp_path: Path, seed: int) -> tuple[dict, np.ndarray]:
    pl.seed_everything(seed)
    dm = RetrievalDataModule(source=MovieLensSource(), max_history=20, batch_size=256)
    callback = RetrievalEvaluation(ks=[10, 50])
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        logger=CSVLogger(tmp_path, name=f"seed{seed}"),
        callbacks=[callback],
        enable_progress_bar=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )
    trainer.fit(RetrievalTask(feature_spec=dm.feature_spec, embedding_dim=16), datamodule=dm)
    return callback.last_result.metrics, callback.last_result.lists.items


def test_same_seed_and_thread_count_give_identical_metrics(tmp_path):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        first, first_lists = _tiny_fit_metrics(tmp_path / "a", 3)
        again, again_lists = _tiny_fit_metrics(tmp_path / "b", 3)
        other, _ = _tiny_fit_metrics(tmp_path / "c", 4)
    finally:
        torch.set_num_threads(threads)
    assert first == again  # bit-identical, not approximately equal
    assert np.array_equal(first_lists, again_lists)
    assert other != first  # the seed reaches the model and the data (shuffling and negatives follow it)


def test_data_seed_follows_the_global_seed_unless_set():
    pl.seed_everything(5)
    assert RetrievalDataModule(source=MovieLensSource()).seed == 5
    assert RetrievalDataModule(source=MovieLensSource(), seed=11).seed == 11


def test_wandb_summary_gets_the_intervals(compared, tmp_path, monkeypatch):
    import wandb

    from lightning_retrieval.tracking.wandb_files import read_run
    from lightning_retrieval.tracking.wandb_setup import log_comparison

    monkeypatch.setenv("WANDB_MODE", "offline")
    table = pd.read_csv(compared / "out/table.csv")
    run_dir = log_comparison(table, "lr-tests", name="tiny", save_dir=str(tmp_path))
    wandb.teardown()  # the in-process W&B service writes the run file asynchronously; stopping it flushes it
    summary = read_run(Path(run_dir).parent)["summary"]
    tower = table.set_index("config").loc["tiny_tower"]
    for column in ("recall@50", "recall@50_ci95_low", "recall@50_ci95_high", "recall@50_diff", "recall@50_p"):
        assert summary[f"tiny_tower/{column}"] == pytest.approx(tower[column])
