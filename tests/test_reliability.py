"""Reliability and safety (issue 15): no code from data files or the working folder, checkpoints that honour the
config, fail-fast validation by field, brief errors, SIGTERM exit codes, resumable runs."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from lightning_retrieval.checkpoints import component_class_paths
from lightning_retrieval.errors import CheckpointError, ConfigError, DataError

from conftest import REPO, make_raw, subprocess_env

CONFIGS = REPO / "configs"
TINY = [
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "2",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.limit_test_batches",
    "1",
    "--trainer.limit_predict_batches",
    "1",
    "--data.batch_size",
    "128",
    "--data.eval_batch_size",
    "128",
]


def _cli(*args: str, cwd, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m lightning_retrieval ARGS`` in ``cwd``; no plugin folder named unless ``env`` names one."""
    base = subprocess_env()
    base["WANDB_MODE"] = "disabled"
    base.pop("LIGHTNING_RETRIEVAL_PLUGIN_PATH", None)
    base.pop("LIGHTNING_RETRIEVAL_DEBUG", None)
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "lightning_retrieval", *args],
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _run(subcommand: str, config: str, run_dir: Path, *extra: str, env: dict | None = None):
    """A tiny ``subcommand`` of a repo config, run in (and writing into) ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    args = ("--config", str(CONFIGS / config), *TINY, "--trainer.default_root_dir", str(run_dir), *extra)
    return _cli(subcommand, *args, cwd=run_dir, env=env)


def _fit(config: str, run_dir: Path, *extra: str) -> Path:
    """A tiny ``fit``; returns its ``last.ckpt``."""
    out = _run("fit", config, run_dir, *extra)
    assert out.returncode == 0, out.stderr[-3000:]
    (last,) = run_dir.rglob("last.ckpt")
    return last


# ---- 1. pre-trained ID files cannot run code ----


class _Payload:
    """Unpickling this creates ``marker`` (what a malicious ``__reduce__`` could do with any call)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pretrained_ids_file_with_a_pickle_payload_is_refused_without_running_it(tmp_path):
    from lightning_retrieval.models.pretrained import FORMAT, load_pretrained_ids, save_pretrained_ids

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "embedding_dim": 4, "user_ids": [_Payload(marker)]}, evil)
    with pytest.raises(CheckpointError, match=r"evil\.pt.*refusing"):
        load_pretrained_ids(evil)
    assert not marker.exists(), "loading the file ran code from it"

    good = save_pretrained_ids(tmp_path / "ok.pt", ["a", "b"], torch.ones(2, 4), [7, 8, 9], torch.ones(3, 4), (0, 5))
    blob = load_pretrained_ids(good)
    assert blob["user_ids"] == ["a", "b"] and blob["item_table"].shape == (3, 4)


def test_empty_and_truncated_files_are_named_as_such(tmp_path):
    from lightning_retrieval.checkpoints import safe_torch_load
    from lightning_retrieval.data import InteractionsFileSource
    from lightning_retrieval.models.pretrained import load_pretrained_ids

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt is empty"):
        load_pretrained_ids(empty)
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.randn(64, 64)}}, whole)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.ckpt is corrupt or truncated"):
        safe_torch_load(cut)

    inter = tmp_path / "interactions.csv"
    inter.write_bytes(b"")
    with pytest.raises(DataError, match=r"interactions\.csv: the file is empty"):
        InteractionsFileSource(str(inter)).load()
    make_raw().interactions.to_csv(inter, index=False)
    items = tmp_path / "items.parquet"
    items.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match=r"items\.parquet: cannot be read as parquet"):
        InteractionsFileSource(str(inter), items_path=str(items)).load()


# ---- 2. plugin folders only when named ----


def test_cli_does_not_import_plugins_from_the_working_folder_unless_named(tmp_path):
    (tmp_path / "plugins").mkdir()
    marker = tmp_path / "pwned"
    (tmp_path / "plugins" / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")

    out = _cli("registry", "crossing", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mlp" in out.stdout
    assert not marker.exists(), "./plugins/evil.py was executed without being named"

    out = _cli("--plugins", "plugins", "registry", "crossing", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert marker.exists(), "--plugins DIR must import the named folder"


def test_plugin_example_config_needs_its_plugin_folder_named():
    config = REPO / "configs" / "plugin_example.yaml"
    assert "--plugins plugins" in config.read_text(), "the example config must say how to name the plugin folder"
    out = _cli("fit", "--config", str(config), "--print_config", cwd=REPO)
    assert out.returncode != 0 and "gated_mlp" in out.stderr  # ./plugins is not imported unless named
    out = _cli("--plugins", "plugins", "fit", "--config", str(config), "--print_config", cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "GatedFieldCrossing" in out.stdout


# ---- 3. checkpoints honour the config ----


def _printed_model(config: str, cwd: Path) -> dict:
    """The model tree of ``config`` as the CLI resolves it (``--print_config``)."""
    out = _cli("test", "--config", str(CONFIGS / config), "--print_config", cwd=cwd)
    assert out.returncode == 0, out.stderr[-2000:]
    return yaml.safe_load(out.stdout)["model"]


def _model_key(model_tree: dict, name: str) -> str:
    """Dotted CLI key of ``name`` inside a model tree (e.g. where ``serving_rule`` lives)."""

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                path = f"{prefix}.{key}"
                if key == name:
                    return path
                found = walk(value, path)
                if found:
                    return found
        return None

    found = walk(model_tree, "--model")
    assert found, f"{name} not in the model config"
    return found


def _searched_embeddings(run_dir: Path) -> float:
    (card,) = run_dir.rglob("result_card_test.json")
    import json

    return float(json.loads(card.read_text())["protocol"]["searched_embeddings"])


def test_checkpoint_of_another_model_is_refused_and_test_time_serving_rule_is_used(tmp_path):
    dcm_tree = _printed_model("dcm.yaml", tmp_path)
    # 8 interests, so that `log2` keeps fewer than all of them for users with under 256 interactions
    interests = (_model_key(dcm_tree, "num_interests"), "8")
    two_tower_ckpt = _fit("two_tower.yaml", tmp_path / "two_tower")
    dcm_ckpt = _fit("dcm.yaml", tmp_path / "dcm", *interests)

    # a two-tower checkpoint under the DCM config: refused, naming both, nothing written
    out = _run("test", "dcm.yaml", tmp_path / "mismatch", *interests, "--ckpt_path", str(two_tower_ckpt))
    assert out.returncode == 2, out.stderr[-3000:]
    assert "does not match the configured model" in out.stderr and str(two_tower_ckpt) in out.stderr
    (saved_config,) = (tmp_path / "two_tower").rglob("config.yaml")
    two_tower_paths = component_class_paths(yaml.safe_load(saved_config.read_text())["model"])
    dcm_paths = component_class_paths(dcm_tree)
    differing = [k for k in dcm_paths if two_tower_paths.get(k, "") != dcm_paths[k]]
    assert differing and any(
        two_tower_paths.get(k, "?") in out.stderr and dcm_paths[k] in out.stderr for k in differing
    ), out.stderr  # the checkpoint's class and the config's class are both named
    assert "Traceback" not in out.stderr
    assert not list((tmp_path / "mismatch").rglob("result_card_test.json"))

    # the serving rule given at test time is used (not the one saved in the checkpoint)
    searched = {}
    for rule in ("log2", "all"):
        run = tmp_path / f"serve_{rule}"
        out = _run(
            "test",
            "dcm.yaml",
            run,
            *interests,
            _model_key(dcm_tree, "serving_rule"),
            rule,
            "--ckpt_path",
            str(dcm_ckpt),
        )
        assert out.returncode == 0, out.stderr[-3000:]
        searched[rule] = _searched_embeddings(run)
    assert searched["all"] > searched["log2"], searched


def test_checkpoint_check_is_generic_over_classes_and_shapes(tmp_path):
    from lightning_retrieval.checkpoints import check_checkpoint_matches

    model = torch.nn.Sequential(torch.nn.Linear(3, 4))
    config = {"class_path": "pkg.Model", "init_args": {"rule": {"class_path": "pkg.RuleB"}}}
    saved = {"_class_path": "pkg.Model", "rule": {"class_path": "pkg.RuleA"}}
    ckpt = {"hyper_parameters": saved, "state_dict": model.state_dict()}
    assert check_checkpoint_matches(ckpt, model, config, "a.ckpt") == ["rule"]  # parameter-free: config wins
    other = {"hyper_parameters": {**saved, "_class_path": "pkg.Other"}, "state_dict": model.state_dict()}
    with pytest.raises(CheckpointError, match=r"holds pkg\.Other, the config builds pkg\.Model"):
        check_checkpoint_matches(other, model, config, "a.ckpt")
    wider = {"hyper_parameters": saved, "state_dict": torch.nn.Sequential(torch.nn.Linear(3, 5)).state_dict()}
    with pytest.raises(CheckpointError, match=r"0\.weight \[5, 3\] vs \[4, 3\]"):
        check_checkpoint_matches(wider, model, config, "a.ckpt")


# ---- 4. timestamps and duplicates ----


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_datetime_columns_of_any_unit_become_unix_seconds(unit):
    from lightning_retrieval.data.schema import timestamps_to_seconds

    seconds = np.array([0, 86_400, 1_700_000_000, 1_700_000_001])
    values = pd.Series(seconds.astype("datetime64[s]").astype(f"datetime64[{unit}]"))
    np.testing.assert_array_equal(timestamps_to_seconds(values).to_numpy(), seconds)
    aware = values.dt.tz_localize("UTC").dt.tz_convert("Europe/Paris")
    np.testing.assert_array_equal(timestamps_to_seconds(aware).to_numpy(), seconds)


def test_iso_text_timestamps_are_converted_and_bad_text_is_named(tmp_path):
    from lightning_retrieval.data import InteractionsFileSource

    raw = make_raw(n_users=3, per_user=4).interactions
    expected = raw["timestamp"].to_numpy() + 1_600_000_000
    raw["timestamp"] = pd.to_datetime(expected, unit="s").strftime("%Y-%m-%dT%H:%M:%S")
    path = tmp_path / "inter.csv"
    raw.to_csv(path, index=False)
    loaded = InteractionsFileSource(str(path)).load().interactions
    np.testing.assert_array_equal(loaded["timestamp"].to_numpy(), expected)

    raw.loc[1, "timestamp"] = "yesterday"
    raw.to_csv(path, index=False)
    with pytest.raises(DataError, match="timestamp.*ISO-8601"):
        InteractionsFileSource(str(path)).load()


def test_duplicate_rows_are_counted_and_kept_or_dropped(tmp_path):
    from lightning_retrieval.data import InteractionsFileSource, RetrievalDataModule

    inter = make_raw(n_users=6, per_user=8).interactions
    doubled = pd.concat([inter, inter.iloc[:5]], ignore_index=True)
    path = tmp_path / "inter.csv"
    doubled.to_csv(path, index=False)
    kept = RetrievalDataModule(source=InteractionsFileSource(str(path), rating_column="rating"), max_history=4)
    dropped = RetrievalDataModule(
        source=InteractionsFileSource(str(path), rating_column="rating"), max_history=4, duplicates="drop"
    )
    assert kept.describe()["duplicate_rows"] == 5 and kept.describe()["duplicate_rows_dropped"] == 0
    assert len(kept.data.item) == len(doubled)
    assert dropped.describe()["duplicate_rows"] == 5 and dropped.describe()["duplicate_rows_dropped"] == 5
    assert len(dropped.data.item) == len(inter)
    with pytest.raises(ConfigError, match="data.duplicates"):
        RetrievalDataModule(source=InteractionsFileSource(str(path)), duplicates="merge")


# ---- 5. index parameters and ks before training ----


@pytest.mark.parametrize(
    ("name", "kwargs", "field"),
    [
        ("hnsw", {"m": 0}, "hnsw.m"),
        ("hnsw", {"ef_construction": -5}, "hnsw.ef_construction"),
        ("hnsw", {"ef_search": 0}, "hnsw.ef_search"),
        ("ivfpq", {"nlist": 0}, "ivfpq.nlist"),
        ("ivfpq", {"pq_m": -1}, "ivfpq.pq_m"),
        ("ivfpq", {"nbits": 0}, "ivfpq.nbits"),
        ("ivfpq", {"nbits": 40}, "ivfpq.nbits"),
        ("ivfpq", {"nprobe": 0}, "ivfpq.nprobe"),
        ("ivfpq", {"nlist": 8, "nprobe": 16}, "ivfpq.nprobe"),
    ],
)
def test_index_parameters_are_refused_at_construction(name, kwargs, field):
    from lightning_retrieval.retrieval.index import HNSWIndex, IVFPQIndex

    cls = {"hnsw": HNSWIndex, "ivfpq": IVFPQIndex}[name]
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        cls(**kwargs)


def _evaluation_setup(callback, dm, stage="fit"):
    callback.setup(SimpleNamespace(datamodule=dm), None, stage)


def test_ks_and_index_are_checked_against_the_corpus_at_setup():
    from lightning_retrieval.callbacks.retrieval_evaluation import RetrievalEvaluation
    from lightning_retrieval.data import RetrievalDataModule
    from lightning_retrieval.data.sources import InteractionSource
    from lightning_retrieval.retrieval.index import IVFPQIndex

    class Tiny(InteractionSource):
        def load(self):
            return make_raw(n_users=6, n_items=12, per_user=8)

    dm = RetrievalDataModule(source=Tiny(), max_history=4)
    _evaluation_setup(RetrievalEvaluation(ks=[1, 4]), dm)  # fits: 12 items, at most 6 seen before validation
    with pytest.raises(ConfigError, match=r"max\(ks\)=20 is larger than the corpus \(12 items\)"):
        _evaluation_setup(RetrievalEvaluation(ks=[5, 20]), dm)
    with pytest.raises(ConfigError, match="after excluding seen items"):
        _evaluation_setup(RetrievalEvaluation(ks=[10]), dm)
    with pytest.raises(ConfigError, match="ivfpq: training needs at least 256 vectors"):
        _evaluation_setup(RetrievalEvaluation(ks=[1], index=IVFPQIndex(nlist=4, nprobe=2)), dm)


# ---- 6. sizes by field ----


@pytest.mark.parametrize("field", ["batch_size", "eval_batch_size", "max_history"])
@pytest.mark.parametrize("value", [0, -3])
def test_datamodule_sizes_are_reported_by_field(field, value):
    from lightning_retrieval.data import RetrievalDataModule

    with pytest.raises(ConfigError, match=f"data.{field} must be a positive integer, got {value}"):
        RetrievalDataModule(**{field: value})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ks": [10, 0]}, r"ks\[1\]"),
        ({"batch_size": 0}, "batch_size"),
        ({"corpus_batch_size": -1}, "corpus_batch_size"),
    ],
)
def test_evaluation_sizes_are_reported_by_field(kwargs, field):
    from lightning_retrieval.callbacks.retrieval_evaluation import RetrievalEvaluation

    with pytest.raises(ConfigError, match=f"retrieval_evaluation.{field} must be a positive integer"):
        RetrievalEvaluation(**kwargs)


@pytest.mark.parametrize("value", [0, -8])
def test_embedding_dim_is_reported_by_field(value):
    from lightning_retrieval.models.embeddings import IdEmbeddings

    with pytest.raises(ConfigError, match=f"embedding_dim must be a positive integer, got {value}"):
        IdEmbeddings(3, 4, 0, value)


# ---- 7/8. brief errors through the CLI ----


def test_own_errors_print_one_message_unless_debug(tmp_path):
    args = ("fit", "--config", str(CONFIGS / "two_tower.yaml"), "--data.batch_size", "0")
    out = _cli(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert "data.batch_size must be a positive integer, got 0" in out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("batch_size") == 1, out.stderr
    assert len(out.stderr.split("error (ConfigError)")[1].strip().splitlines()) <= 2, out.stderr

    debug = _cli(*args, cwd=tmp_path, env={"LIGHTNING_RETRIEVAL_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr

    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(b"PK\x03\x04 truncated")
    out = _cli("test", "--config", str(CONFIGS / "two_tower.yaml"), "--ckpt_path", str(truncated), cwd=tmp_path)
    assert out.returncode == 2 and "cut.ckpt is corrupt or truncated" in out.stderr
    assert "Traceback" not in out.stderr


# ---- 9. SIGTERM ----

SIGTERM_CALLBACK = """
import os, signal
from lightning.pytorch import Callback


class SigtermInSecondEpoch(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)
"""


def test_sigterm_during_fit_exits_non_zero_and_says_where(tmp_path):
    (tmp_path / "sigterm_callback.py").write_text(SIGTERM_CALLBACK)
    out = _cli(
        "fit",
        "--config",
        str(CONFIGS / "two_tower.yaml"),
        *TINY,
        "--trainer.max_epochs",
        "3",
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
        "--trainer.callbacks+=sigterm_callback.SigtermInSecondEpoch",
        cwd=tmp_path,  # `python -m` puts the working folder on sys.path: the callback module is importable
    )
    assert out.returncode == 128 + signal.SIGTERM, out.stderr[-3000:]
    assert "stopped by SIGTERM in epoch 1" in out.stderr


# ---- 10. resume follows the uninterrupted run ----


VAL_COLUMNS = ("val/recall@50", "val/ndcg@50", "val/loss")


def _val_history(run_dir: Path) -> tuple[list[Path], np.ndarray]:
    """The metrics.csv files under ``run_dir`` and their validation rows ``[epoch, recall, ndcg, loss]``."""
    files = sorted(run_dir.rglob("metrics.csv"))
    rows = []
    for f in files:
        with f.open() as fh:
            rows += [
                [float(r["epoch"])] + [float(r[c]) for c in VAL_COLUMNS]
                for r in csv.DictReader(fh)
                if r[VAL_COLUMNS[0]]
            ]
    return files, np.array(sorted(rows))


SHARDED = ("--config", str(CONFIGS / "strategies/torchrec.yaml"), "--trainer.accelerator=cpu", "--trainer.devices=1")


@pytest.mark.parametrize(
    "strategy", [pytest.param((), id="single"), pytest.param(SHARDED, id="torchrec", marks=pytest.mark.slow)]
)
def test_interrupted_and_resumed_fit_reaches_the_uninterrupted_metrics(tmp_path, strategy):
    extra = ("--data.negative_sampler", "uniform", "--trainer.limit_train_batches", "4")
    extra += ("--trainer.limit_val_batches", "2", *strategy)
    straight = tmp_path / "straight"
    _fit("two_tower.yaml", straight, "--trainer.max_epochs", "2", *extra)
    resumed = tmp_path / "resumed"
    last = _fit("two_tower.yaml", resumed, "--trainer.max_epochs", "1", *extra)
    if strategy:  # the sharded tables' optimizer state (row-wise Adagrad momentum) is in the checkpoint
        fused = torch.load(last, weights_only=True)["torchrec_fused_optimizer"]
        assert any(v.abs().sum() > 0 for entries in fused.values() for v in entries.values())
    _fit("two_tower.yaml", resumed, "--trainer.max_epochs", "2", "--ckpt_path", str(last), *extra)

    _, expected = _val_history(straight)
    files, got = _val_history(resumed)
    assert len(files) == 1, f"metrics split over {files}"  # one history, both epochs
    np.testing.assert_array_equal(expected[:, 0], [0, 1])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert expected[0][1] != expected[1][1]  # the second epoch changed the model (the comparison means something)


def test_epoch_order_and_negatives_depend_on_seed_and_epoch_only_not_on_workers():
    from lightning_retrieval.data import RetrievalDataModule
    from lightning_retrieval.data.negatives import UniformNegativeSampler
    from lightning_retrieval.data.sources import InteractionSource

    class Tiny(InteractionSource):
        def load(self):
            return make_raw(n_users=8, n_items=30, per_user=12)

    def epoch_batches(num_workers, epoch):
        dm = RetrievalDataModule(
            source=Tiny(),
            max_history=4,
            batch_size=8,
            negative_sampler=UniformNegativeSampler(5),
            num_workers=num_workers,
        )
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return [(b["item"].tolist(), b["neg_item"].tolist()) for b in loader]

    first, again = epoch_batches(0, 0), epoch_batches(0, 0)
    assert first == again  # a fresh loader (a resumed run) replays epoch 0
    assert epoch_batches(0, 1) != first  # another epoch, another order
    assert epoch_batches(0, 1) == epoch_batches(0, 1)
    with_workers = epoch_batches(2, 1)
    assert with_workers == epoch_batches(0, 1)  # workers do not change the draws
    negatives = [tuple(neg) for _, neg in with_workers]
    assert len(set(negatives)) == len(negatives)  # no two batches (workers) share a negative stream
