"""Checkpoints: loading ``torch.save`` files without running code from them (errors name the file), checking a
checkpoint against the configured model, and keeping one log folder across a resumed run."""

from __future__ import annotations

import csv
import pickle
import zipfile
from pathlib import Path

import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger

from lightning_retrieval.errors import CheckpointError


def safe_torch_load(path, what: str = "checkpoint"):
    """``torch.load(path, weights_only=True)`` on CPU: tensors, containers, numbers and strings only.

    Raises :class:`CheckpointError` naming ``path`` if it is missing, empty, truncated/corrupt, or holds
    objects that only an unrestricted unpickler could build (which could run arbitrary code).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{what} {path} holds objects other than tensors, containers, numbers and strings; refusing to load it "
            f"(loading could run code from the file): {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"{what} {path} is corrupt or truncated and cannot be read: {err}") from err


def component_class_paths(config: dict, prefix: str = "") -> dict[str, str]:
    """``{dotted key: class_path}`` of every component in a ``{class_path, init_args}`` config tree."""
    found = {}
    if not isinstance(config, dict):
        return found
    if "class_path" in config:
        found[prefix or "model"] = str(config["class_path"])
        config = config.get("init_args") or {}
    for key, value in config.items():
        if isinstance(value, dict):
            found.update(component_class_paths(value, f"{prefix}.{key}" if prefix else key))
    return found


def checkpoint_model_config(checkpoint: dict) -> dict:
    """The model's ``{class_path, init_args}`` as LightningCLI saved it in ``hyper_parameters`` (may be empty)."""
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    hparams.pop("_instantiator", None)
    if "_class_path" in hparams:
        return {"class_path": hparams.pop("_class_path"), "init_args": hparams}
    return {"init_args": hparams}


def _examples(keys, n: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def check_checkpoint_matches(checkpoint: dict, model: torch.nn.Module, model_config: dict, path) -> list[str]:
    """Refuse a checkpoint trained for another model: a different model class, or parameters/buffers whose
    names or shapes differ from the configured model's. Components whose class differs but whose parameters
    match (serving rules, mergers, parameter-free blocks) follow the config; their keys are returned.

    Raises :class:`CheckpointError` naming the checkpoint's and the config's classes and the first differences.
    """
    saved = component_class_paths(checkpoint.get("model_config") or checkpoint_model_config(checkpoint))
    configured = component_class_paths(model_config)
    differing = sorted(k for k in saved.keys() & configured.keys() if saved[k] != configured[k])
    problems = []
    if "model" in differing:
        problems.append("another model class")
    state = checkpoint.get("state_dict")
    if state is not None:
        ours = model.state_dict()
        only_saved, only_ours = state.keys() - ours.keys(), ours.keys() - state.keys()
        reshaped = [
            k
            for k in state.keys() & ours.keys()
            if not isinstance(ours[k], torch.nn.parameter.UninitializedParameter)
            and hasattr(state[k], "shape")
            and tuple(state[k].shape) != tuple(ours[k].shape)
        ]
        if only_saved:
            problems.append(f"{len(only_saved)} tensor(s) the configured model lacks: {_examples(only_saved)}")
        if only_ours:
            problems.append(f"{len(only_ours)} tensor(s) of the configured model missing: {_examples(only_ours)}")
        if reshaped:
            shown = ", ".join(f"{k} {list(state[k].shape)} vs {list(ours[k].shape)}" for k in sorted(reshaped)[:3])
            problems.append(f"{len(reshaped)} tensor(s) of another shape (checkpoint vs config): {shown}")
    if problems:
        keys = [k for k in differing if k != "model"] or []
        saved_desc = saved.get("model", "unknown (no hyper-parameters saved)")
        ours_desc = configured.get("model", f"{type(model).__module__}.{type(model).__qualname__}")
        parts = "".join(f"; {k}: checkpoint {saved[k]} vs config {configured[k]}" for k in keys)
        raise CheckpointError(
            f"checkpoint {path} does not match the configured model: the checkpoint holds {saved_desc}, the config "
            f"builds {ours_desc}{parts}; {'; '.join(problems)}. Use the config the checkpoint was trained with."
        )
    return [k for k in differing if k != "model"]


class RunRecord(Callback):
    """Writes into every checkpoint what a later run needs to continue or check it: the loggers' versions
    (``logger_versions``: a resumed ``fit`` logs into the same ``csv/version_N`` folder, one metrics history)
    and the configured model tree (``model_config``: the component classes, which the model's saved
    hyper-parameters may leave out)."""

    def __init__(self, model_config: dict | None = None):
        self.model_config = model_config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["logger_versions"] = [
            [type(logger).__name__, logger.version if isinstance(logger.version, (int, str)) else None]
            for logger in trainer.loggers
        ]
        if self.model_config:
            checkpoint["model_config"] = self.model_config


def restore_logger_versions(trainer, checkpoint: dict) -> list[str]:
    """Give file loggers (CSV, TensorBoard) without an explicit version the version saved in ``checkpoint``, and
    keep the CSV rows logged up to the checkpoint's epoch (Lightning's CSV writer would delete the file);
    returns the log folders that are continued."""
    continued = []
    saved = checkpoint.get("logger_versions") or []
    for logger, (name, version) in zip(trainer.loggers, saved):
        if type(logger).__name__ != name or version is None or getattr(logger, "_version", 0) is not None:
            continue  # another logger, or an explicit `version:` in the config (which wins)
        logger._version = version
        if isinstance(logger, CSVLogger):
            _continue_csv_history(logger, int(checkpoint.get("epoch", -1)))
        continued.append(str(logger.log_dir))
    return continued


def _continue_csv_history(logger: CSVLogger, last_epoch: int) -> None:
    """Re-write the rows of ``metrics.csv`` up to ``last_epoch`` through the logger's (new) writer."""
    path = Path(logger.log_dir) / "metrics.csv"
    rows = []
    if path.is_file():
        with path.open(newline="") as f:
            rows = [{k: v for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    rows = [r for r in rows if "epoch" not in r or float(r["epoch"]) <= last_epoch]
    writer = logger.experiment  # creating the writer deletes the old file
    if rows:
        writer.metrics = rows
        writer.save()
