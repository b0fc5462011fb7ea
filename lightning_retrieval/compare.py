"""``lightning-retrieval compare CONFIG [CONFIG ...] [--output FILE.md]``: train and test several configs with
the same CLI, then write one Markdown (+ CSV) table from their result cards.

For each config: ``fit``, then ``test`` on the best checkpoint (the ModelCheckpoint monitor) or, for models
with nothing to train, ``test`` alone. Columns: test metrics, parameter count, mean training seconds per
epoch (from the ``training_speed`` callback when the config has it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import yaml

from lightning_retrieval.callbacks.result_card import read_result_card

CONDITIONAL = ("cond_recall", "cond_ndcg", "match_rate", "scanned_per_query", "short_queries")
METRICS = (
    "recall@20",
    "recall@50",
    "ndcg@50",
    "hit_rate@50",
    "coverage@50",
    "topic_diversity@50",
    "embedding_diversity@50",
)


def _run_dir(config: Path) -> Path:
    cfg = yaml.safe_load(config.read_text())
    root = (cfg.get("trainer") or {}).get("default_root_dir")
    if not root:
        raise SystemExit(f"{config}: set trainer.default_root_dir so compare can find the run's files")
    return Path(root)


def _is_trainable(config: Path) -> bool:
    model = (yaml.safe_load(config.read_text()).get("model") or {}).get("class_path", "")
    return model not in ("popularity", "PopularityRetrieval") and not model.endswith(".PopularityRetrieval")


def run_config(config: Path, quiet: bool = True) -> dict:
    from lightning_retrieval.cli import main as cli

    extra = ["--trainer.enable_progress_bar=false"] if quiet else []
    run_dir = _run_dir(config)
    started = time.perf_counter()
    if _is_trainable(config):
        cli(["fit", "--config", str(config), *extra])
        ckpts = sorted(run_dir.rglob("epoch=*.ckpt"), key=lambda p: p.stat().st_mtime)
        ckpt = ckpts[-1] if ckpts else next(run_dir.rglob("last.ckpt"))
        cli(["test", "--config", str(config), "--ckpt_path", str(ckpt), *extra])
    else:
        cli(["test", "--config", str(config), *extra])
    wall = time.perf_counter() - started
    card = read_result_card(run_dir)
    row = {"config": config.stem, "model": card["model"], "parameters": card.get("parameters")}
    row.update({m: card["metrics"].get(m) for m in METRICS if m in card["metrics"]})
    row.update({m: v for m, v in card["metrics"].items() if m.split("@")[0] in CONDITIONAL or m in CONDITIONAL})
    row.update({m: v for m, v in sorted(card["metrics"].items()) if m.startswith("recall@50/")})  # per segment
    epoch_seconds = []
    for metrics_file in run_dir.rglob("metrics.csv"):
        frame = pd.read_csv(metrics_file)
        if "train/epoch_seconds" in frame and metrics_file.stat().st_mtime >= time.time() - wall - 5:
            epoch_seconds += frame["train/epoch_seconds"].dropna().tolist()
    row["train_s_per_epoch"] = sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else None
    row["epochs"] = len(epoch_seconds) or None
    row["wall_s"] = wall
    return row


def to_markdown(frame: pd.DataFrame) -> str:
    def fmt(value, column):
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return "-"
        if column == "parameters":
            return f"{int(value):,}"
        if column in ("train_s_per_epoch", "wall_s"):
            return f"{value:.1f}"
        if column == "epochs":
            return str(int(value))
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(row[c], c) for c in cols) + " |" for _, row in frame.iterrows()]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lightning-retrieval compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--output", type=Path, default=None, help="Markdown file (a .csv is written beside it)")
    args = parser.parse_args(argv)
    rows = [run_config(c) for c in args.configs]
    frame = pd.DataFrame(rows)
    table = to_markdown(frame)
    print("\n" + table)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        command = "lightning-retrieval compare " + " ".join(str(c) for c in args.configs) + f" --output {args.output}"
        args.output.write_text(f"Reproduce: `{command}`\n\n{table}\n")
        frame.to_csv(args.output.with_suffix(".csv"), index=False)
        print(f"\nwritten: {args.output} and {args.output.with_suffix('.csv')}")
