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


def configure_wandb_loggers(trainer, config: dict, experiment: str) -> None:
    """Name, group and tag every not-yet-started W&B run of ``trainer`` and log the full resolved ``config``.

    Run name: ``<experiment>-<task>-<model components>``; group: the experiment (config file stem); tags: the
    registry names of every chosen component. Values the user set explicitly are kept.
    """
    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if not loggers:
        return
    names = component_names(config.get("model", {}), registry_only=True)
    all_names = component_names(config, registry_only=True)
    for logger in loggers:
        if getattr(logger, "_experiment", None) is None:  # wandb.init not called yet: its kwargs still apply
            init = logger._wandb_init
            init["name"] = init.get("name") or "-".join([experiment, *names[:4]])
            init["group"] = init.get("group") or experiment
            init["tags"] = list(dict.fromkeys([*(init.get("tags") or []), *all_names]))[:64]
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
    data = datamodule.data
    topic_names = data.topic_names

    def topics_of(items, limit):
        counts = {}
        for item in items:
            for t in data.item_topics.row(int(item)):
                counts[topic_names[t]] = counts.get(topic_names[t], 0) + 1
        return ", ".join(name for name, _ in sorted(counts.items(), key=lambda kv: -kv[1])[:limit])

    samples = []
    for i in range(min(sample_users, len(rows))):
        row = int(rows[i])
        history = eval_set.exclude.row(row) if eval_set.exclude.values.size else []
        retrieved = [int(x) for x in result.lists.items[i, :10] if x >= 0]
        samples.append(
            [
                str(data.user_ids[eval_set.users[row]]),
                topics_of(history, 3),
                ", ".join(str(data.item_ids[x]) for x in retrieved),
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
