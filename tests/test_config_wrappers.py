"""Wrapper configs: a file whose only key is ``config: OTHER.yaml`` (jsonargparse's nested config file) runs the model
config it names unchanged, in its own run directory ``runs/<wrapper stem>`` (e.g. configs/remi/*_full.yaml: the
REMI configs at the full training budget, beside the 100-step runs of runs/remi_*)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from lightning_retrieval.configs import run_dir_of

REPO = Path(__file__).resolve().parents[1]
WRAPPERS = sorted(
    p for p in (REPO / "configs").rglob("*.yaml") if set(yaml.safe_load(p.read_text()) or {}) == {"config"}
)


def _print_config(config: Path, cwd: Path) -> dict:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "lightning_retrieval", "fit", "--config", str(config), "--print_config"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return yaml.safe_load(done.stdout)


def test_wrappers_name_a_model_config_beside_them_and_run_in_their_own_directory():
    names = {p.stem for p in WRAPPERS}
    assert {f"remi_{m}{fix}_full" for m in ("dcm", "sa") for fix in ("", "_rr", "_ihn")} <= names
    for path in WRAPPERS:
        target = path.parent / yaml.safe_load(path.read_text())["config"]
        assert target.is_file(), f"{path}: config: {target.name} does not exist beside it"
        assert "model" in yaml.safe_load(target.read_text()), f"{path} names {target}, which is not a model config"
        assert run_dir_of(path) == Path("runs") / path.stem != run_dir_of(target), path


def test_a_wrapper_parses_to_exactly_the_config_it_names(tmp_path):
    wrapper = REPO / "configs/remi/remi_dcm_rr_full.yaml"
    printed = _print_config(wrapper, tmp_path)
    assert printed == _print_config(REPO / "configs/remi/remi_dcm_rr.yaml", tmp_path)
    queries = printed["model"]["init_args"]["queries"]["init_args"]
    assert [r["class_path"].rpartition(".")[2] for r in queries["regularizers"]] == ["RoutingRegularization"]
    assert printed["trainer"]["max_epochs"] == 8  # the committed trainer's budget, not the 100-step table's
