"""Run directories of layered configs.

A model config names the shared fragments as jsonargparse group config files (``trainer: base/trainer.yaml``,
``data: base/data.yaml``) and carries no paths. The run directory is ``runs/<stem of the first --config file>``
unless ``trainer.default_root_dir`` is set. In the trainer's loggers and callbacks, the placeholder ``${run_dir}``
in a string (``save_dir: ${run_dir}``) stands for it, and a ``ModelCheckpoint`` without ``dirpath`` writes to
``<run dir>/checkpoints``. The CLI applies this before instantiating classes (:func:`fill_run_paths`), so the
run's saved ``config.yaml`` holds the real paths; :func:`run_dir_of` tells where a config's run lands without
parsing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from lightning_retrieval.errors import ConfigError

RUNS_ROOT = Path("runs")
RUN_DIR = "${run_dir}"


def run_dir_of(config_path: str | Path) -> Path:
    """The run directory of ``lightning-retrieval fit --config CONFIG_PATH`` (relative to the working directory).

    ``trainer.default_root_dir`` of the file (or of the trainer fragment it names), else ``runs/<file stem>``.
    """
    config_path = Path(config_path)
    trainer = (yaml.safe_load(config_path.read_text()) or {}).get("trainer")
    if isinstance(trainer, str):  # a group config file, relative to the file naming it
        fragment = config_path.parent / trainer
        trainer = yaml.safe_load(fragment.read_text()) if fragment.exists() else None
    root = trainer.get("default_root_dir") if isinstance(trainer, dict) else None
    return Path(root) if root else RUNS_ROOT / config_path.stem


def _get(node: Any, key: str) -> Any:
    return node.get(key) if hasattr(node, "get") else None


def _entries(value: Any) -> list:
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]


def _substitute(node: Any, run_dir: str) -> Any:
    """``node`` with ``${run_dir}`` replaced in every string (Namespaces and dicts are changed in place)."""
    if isinstance(node, str):
        return node.replace(RUN_DIR, run_dir)
    if isinstance(node, list):
        return [_substitute(value, run_dir) for value in node]
    if hasattr(node, "items") and hasattr(node, "__setitem__"):
        for key, value in list(node.items()):
            node[key] = _substitute(value, run_dir)
    return node


def fill_run_paths(config: Any, config_files: Sequence[str | Path] = ()) -> str | None:
    """Give the run of a parsed subcommand ``config`` (a jsonargparse Namespace or a dict) its directory, in place.

    ``trainer.default_root_dir`` defaults to ``runs/<stem of config_files[0]>``; ``${run_dir}`` in the trainer's
    logger and callback arguments becomes that directory, and every ``ModelCheckpoint`` whose ``dirpath`` is unset
    gets ``<run dir>/checkpoints``. Explicit paths are kept. Returns the run directory (None: no config file and
    no ``default_root_dir``; Lightning's defaults apply and ``${run_dir}`` is an error).
    """
    trainer = config["trainer"]
    if not trainer.get("default_root_dir") and config_files:
        trainer["default_root_dir"] = str(RUNS_ROOT / Path(str(config_files[0])).stem)
    run_dir = trainer.get("default_root_dir")
    for key in ("logger", "callbacks"):
        if RUN_DIR in str(trainer.get(key)):
            if not run_dir:
                raise ConfigError(f"trainer.{key} uses {RUN_DIR}: give a --config file or trainer.default_root_dir")
            trainer[key] = _substitute(trainer[key], str(run_dir))
    if not run_dir:
        return None
    for callback in _entries(trainer.get("callbacks")):
        class_path = str(_get(callback, "class_path") or "")
        init_args = _get(callback, "init_args")
        if class_path.rpartition(".")[2] == "ModelCheckpoint" and init_args is not None:
            if init_args.get("dirpath") is None:
                init_args["dirpath"] = str(Path(run_dir) / "checkpoints")
    return str(run_dir)
