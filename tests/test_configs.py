"""Layered configs: model files name shared trainer/data fragments; the run directory comes from the file name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from jsonargparse import Namespace

from lightning_retrieval.configs import RUN_DIR, fill_run_paths, run_dir_of
from lightning_retrieval.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
MODEL_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if "model" in (yaml.safe_load(p.read_text()) or {}))


def test_model_configs_carry_no_run_paths_and_run_in_runs_slash_their_name():
    assert len(MODEL_CONFIGS) >= 15
    for path in MODEL_CONFIGS:
        assert run_dir_of(path) == Path("runs") / path.stem, path
        assert f"runs/{path.stem}" not in "\n".join(line.split("#")[0] for line in path.read_text().splitlines()), (
            f"{path} hard-codes its run directory"
        )


def test_named_fragments_exist_relative_to_the_file_naming_them():
    layered = 0
    for path in MODEL_CONFIGS:
        config = yaml.safe_load(path.read_text())
        for key in ("trainer", "data"):
            if isinstance(config[key], str):
                layered += 1
                fragment = path.parent / config[key]
                assert fragment.is_file(), f"{path}: {key}: {config[key]} does not exist"
                assert isinstance(yaml.safe_load(fragment.read_text()), dict)
    assert layered >= 25  # trainer and data of the model configs come from configs/base/


def test_run_dir_of_prefers_an_explicit_default_root_dir(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("trainer: {default_root_dir: elsewhere/run}\nmodel: {class_path: popularity}\n")
    assert run_dir_of(config) == Path("elsewhere/run")
    config.write_text("trainer: {max_epochs: 1}\nmodel: {class_path: popularity}\n")
    assert run_dir_of(config) == Path("runs/mine")


def _parsed(default_root_dir=None, save_dir=RUN_DIR, dirpath=None) -> Namespace:
    return Namespace(
        trainer=Namespace(
            default_root_dir=default_root_dir,
            logger=[
                Namespace(class_path="lightning.pytorch.loggers.CSVLogger", init_args=Namespace(save_dir=save_dir)),
                Namespace(class_path="lightning.pytorch.loggers.WandbLogger", init_args=Namespace(save_dir="wb")),
            ],
            callbacks=[
                Namespace(class_path="lightning_retrieval.callbacks.X", init_args=Namespace(path=f"{RUN_DIR}/x.pt")),
                Namespace(
                    class_path="lightning.pytorch.callbacks.ModelCheckpoint", init_args=Namespace(dirpath=dirpath)
                ),
            ],
        )
    )


def test_fill_run_paths_derives_the_run_dir_from_the_first_config_and_keeps_explicit_paths():
    config = _parsed()
    assert fill_run_paths(config, [Path("configs/dcm.yaml"), Path("configs/wandb.yaml")]) == "runs/dcm"
    trainer = config.trainer
    assert trainer.default_root_dir == "runs/dcm"
    assert trainer.logger[0].init_args.save_dir == "runs/dcm"
    assert trainer.logger[1].init_args.save_dir == "wb"  # explicit: kept
    assert trainer.callbacks[0].init_args.path == "runs/dcm/x.pt"
    assert trainer.callbacks[1].init_args.dirpath == str(Path("runs/dcm/checkpoints"))

    config = _parsed(default_root_dir="runs/dcm/seed_3", dirpath="ckpts")  # e.g. compare's per-seed runs
    fill_run_paths(config, [Path("configs/dcm.yaml")])
    assert config.trainer.logger[0].init_args.save_dir == "runs/dcm/seed_3"
    assert config.trainer.callbacks[1].init_args.dirpath == "ckpts"


def test_the_placeholder_without_any_run_dir_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"\$\{run_dir\}"):
        fill_run_paths(_parsed(), [])
    config = _parsed(save_dir="logs")
    config.trainer.callbacks.pop(0)
    assert fill_run_paths(config, []) is None  # no paths to derive: Lightning's defaults apply


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", "lightning_retrieval", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_a_layered_config_resolves_its_fragments_from_any_working_directory(tmp_path):
    done = _cli("fit", "--config", str(CONFIGS / "dcm.yaml"), "--print_config", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = yaml.safe_load(done.stdout)
    trainer = printed["trainer"]
    assert trainer["max_epochs"] == 8 and trainer["num_sanity_val_steps"] == 0
    assert [c["class_path"].rpartition(".")[2] for c in trainer["callbacks"]] == [
        "RetrievalEvaluation",
        "TrainingSpeed",
        "ModelCheckpoint",
    ]
    assert printed["data"]["batch_size"] == 512 and printed["data"]["split"] == "leave_last_out"


def test_a_run_lands_in_runs_slash_the_config_name(tmp_path):
    done = _cli(
        "test", "--config", str(CONFIGS / "popularity.yaml"), "--trainer.enable_progress_bar=false", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "runs/popularity/csv").rglob("result_card_test*.json"))
    assert not (tmp_path / RUN_DIR).exists()
