"""Training on the shipped MovieLens data, every logger receiving the metrics, and the CLI end to end."""

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import yaml
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from lightning_retrieval.callbacks import RetrievalEvaluation
from lightning_retrieval.data import MovieLensSource, RetrievalDataModule
from lightning_retrieval.data.negatives import UniformNegativeSampler
from lightning_retrieval.tasks import PopularityRetrieval, RetrievalTask

from conftest import REPO, quiet_trainer, run_cli

pytestmark = pytest.mark.slow


def _trainer(tmp_path, callback, loggers=False, **kw):
    return quiet_trainer(tmp_path, callback, loggers, max_epochs=kw.pop("max_epochs", 2), **kw)


def test_two_tower_learns_and_beats_popularity_with_metrics_in_every_logger(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    pl.seed_everything(0)
    dm = RetrievalDataModule(
        source=MovieLensSource(),
        max_history=50,
        batch_size=512,
        negative_sampler=UniformNegativeSampler(num_negatives=128),
    )
    model = RetrievalTask(feature_spec=dm.feature_spec)
    callback = RetrievalEvaluation(ks=[10, 50])

    _trainer(tmp_path, callback).validate(model, datamodule=dm)
    untrained = callback.last_result.metrics["recall@50"]

    wandb_logger = WandbLogger(project="lr-tests", save_dir=str(tmp_path), offline=True)
    wandb_received = []
    original_log_metrics = wandb_logger.log_metrics

    def recording_log_metrics(metrics, step=None):  # what reaches W&B, recorded on the way through
        wandb_received.append(dict(metrics))
        return original_log_metrics(metrics, step)

    wandb_logger.log_metrics = recording_log_metrics
    loggers = [CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb"), wandb_logger]
    trainer = _trainer(tmp_path, callback, loggers, max_epochs=3)
    trainer.fit(model, datamodule=dm)
    trained = callback.last_result.metrics["recall@50"]

    pop_callback = RetrievalEvaluation(ks=[10, 50])
    _trainer(tmp_path, pop_callback).validate(PopularityRetrieval(), datamodule=dm)
    popularity = pop_callback.last_result.metrics["recall@50"]
    assert trained > untrained + 0.05, (untrained, trained)
    assert trained > popularity, (trained, popularity)

    # CSV
    csv = pd.read_csv(loggers[0].log_dir + "/metrics.csv")
    assert csv["val/recall@50"].dropna().iloc[-1] == pytest.approx(trained)
    assert "val/protocol/corpus_size" in csv.columns
    # TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(loggers[1].log_dir)
    acc.Reload()
    assert acc.Scalars("val/recall@50")[-1].value == pytest.approx(trained, rel=1e-6)
    # W&B (offline run): the logger received the metric, and the run wrote its offline files
    assert [m["val/recall@50"] for m in wandb_received if "val/recall@50" in m][-1] == pytest.approx(trained)
    wandb_logger.experiment.finish()
    assert list(tmp_path.rglob("offline-run-*/run-*.wandb"))
    # result card next to the run
    card = json.loads((tmp_path / "csv" / "version_0" / "result_card_val.json").read_text())
    assert card["protocol"]["exact"] is True and card["protocol"]["corpus_size"] == 9742
    assert card["protocol"]["split"] == "leave_last_out" and card["metrics"]["recall@50"] == pytest.approx(trained)


def _cli(*args, cwd):
    return run_cli(*args, "--trainer.enable_progress_bar=false", cwd=cwd)


def _predict(cfg: str, ckpt, cwd) -> pd.DataFrame:
    """``predict`` with the top-100 writer config; returns the written predictions."""
    _cli(
        "predict",
        "--config",
        cfg,
        "--config",
        str(REPO / "configs" / "predict_topk.yaml"),
        "--ckpt_path",
        str(ckpt),
        cwd=cwd,
    )
    return pd.read_parquet(cwd / "runs/predictions/top100.parquet")


def test_cli_fit_test_predict_and_popularity(tmp_path):
    cfg = str(REPO / "configs" / "two_tower.yaml")
    quick = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=40"]
    _cli("fit", "--config", cfg, *quick, cwd=tmp_path)
    ckpt = tmp_path / "runs/two_tower/checkpoints/last.ckpt"
    assert ckpt.exists()
    val_card = json.loads(next((tmp_path / "runs/two_tower").rglob("result_card_val.json")).read_text())
    assert val_card["metrics"]["recall@50"] > 0

    _cli("test", "--config", cfg, "--ckpt_path", str(ckpt), cwd=tmp_path)
    card_path = next((tmp_path / "runs/two_tower").rglob("result_card_test.json"))
    card = json.loads(card_path.read_text())
    assert card["stage"] == "test" and card["protocol"]["evaluated_users"] == 610
    assert (card_path.with_suffix(".md")).read_text().startswith("# Result card: RetrievalTask(single) (test)")

    _cli("test", "--config", str(REPO / "configs" / "popularity.yaml"), cwd=tmp_path)
    report = run_cli("report", "runs/two_tower", "runs/popularity", cwd=tmp_path)
    assert "PopularityRetrieval" in report.stdout and "RetrievalTask(single)" in report.stdout

    pred = _predict(cfg, ckpt, tmp_path)
    assert list(pred.columns) == ["user_id", "rank", "item_id", "score"]
    assert len(pred) == 610 * 100 and pred.groupby("user_id")["rank"].max().eq(100).all()
    assert pred.groupby("user_id")["score"].apply(lambda s: s.is_monotonic_decreasing).all()
    ratings = pd.read_csv(REPO / "lightning_retrieval/resources/ml-latest-small/ratings.csv")
    seen = set(zip(ratings.userId, ratings.movieId))
    assert not any((u, i) in seen for u, i in zip(pred.user_id, pred.item_id))


def test_cli_trains_the_plugin_config(tmp_path):
    _cli(
        "fit",
        "--config",
        str(REPO / "configs" / "plugin_example.yaml"),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=10",
        cwd=tmp_path,
    )
    metrics = pd.read_csv(next((tmp_path / "runs/plugin_example").rglob("metrics.csv")))
    assert np.isfinite(metrics["val/recall@50"].dropna()).all()
    hparams = next((tmp_path / "runs/plugin_example").rglob("config.yaml")).read_text()
    assert "GatedFieldCrossing" in hparams


def test_cli_multi_embedding_fit_and_predict(tmp_path):
    cfg = str(REPO / "configs" / "dcm.yaml")
    _cli("fit", "--config", cfg, "--trainer.max_epochs=1", "--trainer.limit_train_batches=10", cwd=tmp_path)
    card = json.loads(next((tmp_path / "runs/dcm").rglob("result_card_val.json")).read_text())
    assert card["protocol"]["embeddings_per_user"] == 4 and card["protocol"]["merger"] == "round_robin"
    assert card["protocol"]["searched_embeddings"] >= 610
    assert any(k.startswith("recall@50/history_") for k in card["metrics"])
    ckpt = tmp_path / "runs/dcm/checkpoints/last.ckpt"
    pred = _predict(cfg, ckpt, tmp_path)
    assert len(pred) == 610 * 100 and not pred.duplicated(["user_id", "item_id"]).any()


def test_cli_conditional_retrieval_and_index_baseline(tmp_path):
    _cli(
        "fit",
        "--config",
        str(REPO / "configs/conditional/cr_filter.yaml"),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=10",
        cwd=tmp_path,
    )
    card = json.loads(next((tmp_path / "runs/cr_filter").rglob("result_card_val_conditional.json")).read_text())
    assert card["protocol"]["filter"] == "streaming" and card["protocol"]["queries"] > 610
    assert card["metrics"]["match_rate@50"] == pytest.approx(1.0)  # a filter admits only matching items
    _cli("test", "--config", str(REPO / "configs/conditional/index.yaml"), cwd=tmp_path)
    index_card = json.loads(next((tmp_path / "runs/index").rglob("result_card_test_conditional.json")).read_text())
    assert index_card["model"] == "PopularityRetrieval" and index_card["metrics"]["match_rate@50"] == 1.0
    assert index_card["metrics"]["cond_recall@50"] > 0


# Every committed config trains and tests on a tiny schedule, in this process (no interpreter start per run);
# pretrain_ids first (two_tower_pretrained loads its export). Configs that differ from another only in numbers
# (a cross strength, K, a seed, a size) exercise the same code: one of each such group runs (see _structure).
TINY = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.enable_progress_bar=false",
]


def _structure(node, base: Path):
    """A config with its numbers blanked and its group-config files inlined: what decides which code runs."""
    if isinstance(node, dict):
        skip = ("seed_everything", "default_root_dir")
        return tuple(sorted((k, _structure(v, base)) for k, v in node.items() if k not in skip))
    if isinstance(node, list):
        return tuple(_structure(v, base) for v in node)
    if isinstance(node, str) and node.endswith(".yaml") and (base / node).is_file():
        return _structure(yaml.safe_load((base / node).read_text()), (base / node).parent)
    return "#" if isinstance(node, (int, float)) and not isinstance(node, bool) else node


def _distinct_model_configs() -> list[Path]:
    configs = sorted(
        (p for p in (REPO / "configs").rglob("*.yaml") if "model" in (yaml.safe_load(p.read_text()) or {})),
        key=lambda p: (p.stem != "pretrain_ids", str(p)),
    )
    seen, distinct = set(), []
    for config in configs:
        key = _structure(yaml.safe_load(config.read_text()), config.parent)
        if key not in seen:
            seen.add(key)
            distinct.append(config)
    return distinct


MODEL_CONFIGS = _distinct_model_configs()


def test_config_groups_only_differ_in_numbers():
    """The grouping can fail: a changed component or string setting makes a config distinct."""
    base = REPO / "configs"
    dcm = yaml.safe_load((base / "dcm.yaml").read_text())
    other_k = yaml.safe_load((base / "dcm.yaml").read_text())
    other_k["model"]["init_args"]["queries"]["init_args"]["interests"]["init_args"]["num_interests"] = 9
    other_rule = yaml.safe_load((base / "dcm.yaml").read_text())
    other_rule["model"]["init_args"]["queries"]["init_args"]["serving_rule"] = "all"
    assert _structure(dcm, base) == _structure(other_k, base)
    assert _structure(dcm, base) != _structure(other_rule, base)
    assert len(MODEL_CONFIGS) >= 20 and any(p.stem == "two_tower" for p in MODEL_CONFIGS)


@pytest.fixture(scope="module")
def configs_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("every_config")


@pytest.mark.parametrize("config", MODEL_CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_committed_config_trains_and_tests(configs_dir, config, monkeypatch):
    from lightning_retrieval.cli import main
    from lightning_retrieval.configs import run_dir_of

    monkeypatch.chdir(configs_dir)
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):  # seed_everything exports them; restored afterwards
        monkeypatch.delenv(name, raising=False)
    model = yaml.safe_load(config.read_text())["model"]["class_path"]
    if model != "popularity":
        main(["fit", "--config", str(config), *TINY])
    run_dir = configs_dir / run_dir_of(config)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    main(["test", "--config", str(config), *TINY, *(["--ckpt_path", str(ckpt)] if ckpt.exists() else [])])
    cards = [json.loads(p.read_text()) for p in run_dir.rglob("result_card_test*.json")]
    assert cards and all(np.isfinite(list(card["metrics"].values())).all() for card in cards), config
