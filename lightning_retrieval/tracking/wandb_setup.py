"""Weights & Biases integration: run name / group / tags from the chosen components, the full config,
per-segment tables and sample retrievals. Works offline (``WANDB_MODE=offline`` or ``offline: true``) and
with W&B disabled; nothing here needs a login or the network."""

from __future__ import annotations

import importlib
import inspect

from lightning.pytorch.loggers import WandbLogger


def component_names(config, registry_only: bool = False) -> list[str]:
    """Registry short names (else class names) of every ``class_path`` in a config dict, in order."""
    names: list[str] = []

    def visit(node):
        if isinstance(node, dict):
            if isinstance(node.get("class_path"), str):
                name, registered = short_name(node["class_path"])
                if registered or not registry_only:
                    names.append(name)
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    return list(dict.fromkeys(names))


def short_name(class_path: str) -> tuple[str, bool]:
    """``(registry name or class name, whether it is a registered component)``."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return name or class_path, False
    registered = cls.__dict__.get("registry_name") if inspect.isclass(cls) else None
    return registered or name, registered is not None


def name_wandb_loggers(trainer_config, config: dict, experiment: str) -> None:
    """Before the loggers exist: give every ``WandbLogger`` of a parsed ``trainer`` config (jsonargparse
    Namespace) a run name, group and tags through its init arguments; values the user set are kept.

    Run name: ``<experiment>-<task>-<model components>`` (``name``); group: the experiment, i.e. the config file
    stem; tags: the registry names of every chosen component (``group`` / ``tags`` go to ``wandb.init`` through
    the logger's ``**kwargs``, jsonargparse's ``dict_kwargs``). ``config`` is the resolved config as a dict.
    """
    loggers = trainer_config.get("logger")
    entries = loggers if isinstance(loggers, list) else [loggers]  # or True / False / None
    wandb_loggers = [lg for lg in entries if hasattr(lg, "get") and str(lg.get("class_path")).endswith("WandbLogger")]
    if not wandb_loggers:
        return
    names = component_names(config.get("model", {}), registry_only=True)
    all_names = component_names(config, registry_only=True)
    for logger in wandb_loggers:
        init_args = logger.get("init_args")
        if init_args is not None and not init_args.get("name"):
            init_args["name"] = "-".join([experiment, *names[:4]])
        kwargs = dict(logger.get("dict_kwargs") or {})
        kwargs["group"] = kwargs.get("group") or experiment
        kwargs["tags"] = list(dict.fromkeys([*(kwargs.get("tags") or []), *all_names]))[:64]
        logger["dict_kwargs"] = kwargs


def log_config_to_wandb(trainer, config: dict, experiment: str) -> None:
    """Log the full resolved ``config`` to every W&B run of ``trainer`` (``run.config``)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.config.update(
                {"lightning_retrieval": config, "experiment": experiment}, allow_val_change=True
            )


def log_evaluation_tables(trainer, stage: str, result, eval_set, datamodule, rows, sample_users: int = 5) -> None:
    """Per-segment metrics and a few users' retrievals as ``wandb.Table`` on every W&B logger."""
    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if not loggers:
        return
    segment_rows = []
    for key, value in sorted(result.metrics.items()):
        if "/" in key:
            metric, segment = key.split("/", 1)
            segment_rows.append([segment, metric, float(value)])
    topic_names, item_topics = datamodule.topic_names, datamodule.item_topics()

    def topics_of(items, limit):
        counts = {}
        for item in items:
            for t in item_topics.row(int(item)):
                counts[topic_names[t]] = counts.get(topic_names[t], 0) + 1
        return ", ".join(name for name, _ in sorted(counts.items(), key=lambda kv: -kv[1])[:limit])

    samples = []
    for i in range(min(sample_users, len(rows))):
        row = int(rows[i])
        history = eval_set.exclude.row(row) if eval_set.exclude.values.size else []
        retrieved = [int(x) for x in result.lists.items[i, :10] if x >= 0]
        samples.append(
            [
                str(datamodule.user_ids[eval_set.users[row]]),
                topics_of(history, 3),
                ", ".join(str(datamodule.item_ids[x]) for x in retrieved),
                topics_of(retrieved, 3),
                int(result.lists.hits[i, :10].sum()),
            ]
        )
    for logger in loggers:
        if segment_rows:
            logger.log_table(f"{stage}/segments", columns=["segment", "metric", "value"], data=segment_rows)
        logger.log_table(
            f"{stage}/sample_retrievals",
            columns=["user_id", "history_top_topics", "top10_item_ids", "top10_topics", "hits@10"],
            data=samples,
        )


def log_comparison(frame, project: str, name: str = "compare", save_dir: str | None = None) -> str | None:
    """One W&B run (``job_type="compare"``) for a ``compare`` table: the table itself, and in the run summary every
    numeric cell as ``<config>/<column>`` (means, ``_ci95_low`` / ``_ci95_high``, paired ``_diff*`` and ``_p``).
    Offline unless ``WANDB_MODE`` says otherwise; returns the run directory (None when W&B is disabled)."""
    import math
    import os

    import wandb

    run = wandb.init(
        project=project, name=name, job_type="compare", dir=save_dir, mode=os.environ.get("WANDB_MODE", "offline")
    )
    cells = frame.astype(object).where(frame.notna(), None)
    run.log({"comparison": wandb.Table(columns=[str(c) for c in cells.columns], data=cells.values.tolist())})
    for _, row in frame.iterrows():
        for column, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                run.summary[f"{row['config']}/{column}"] = float(value)
    run_dir = None if run.disabled else str(run.dir)
    run.finish()
    return run_dir
