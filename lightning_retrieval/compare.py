"""``lightning-retrieval compare CONFIG [CONFIG ...] [--output FILE.md]``: train and test several configs with
the same CLI, then write one Markdown (+ CSV) table from their result cards, and plots.

For each config: ``fit``, then ``test`` on the best checkpoint (the ModelCheckpoint monitor) or, for models
with nothing to train, ``test`` alone. ``--runs DIR [DIR ...]`` instead reads finished runs' result cards and
metric files without training. Columns: test metrics, parameter count, mean training seconds per epoch (from
the ``training_speed`` callback when the config has it). With ``--output``, PNG plots are written beside the
table: recall@k curves, recall vs diversity, and per-segment recall.
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


def run_config(config: Path, quiet: bool = True) -> tuple[dict, dict]:
    """Fit + test one config; returns its table row and its result card."""
    from lightning_retrieval.cli import main as lightning_retrieval

    extra = ["--trainer.enable_progress_bar=false"] if quiet else []

    def cli(args: list[str]) -> None:
        print("\n$ lightning-retrieval " + " ".join(args), flush=True)
        lightning_retrieval(args)

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
    return summarize_run(config.stem, run_dir, since=time.time() - wall - 5, wall=wall)


def summarize_run(name: str, run_dir: Path, since: float = 0.0, wall: float | None = None) -> tuple[dict, dict]:
    """Table row and result card of a finished run directory (metric files newer than ``since``)."""
    card = read_result_card(run_dir)
    row = {"config": name, "model": card["model"], "parameters": card.get("parameters")}
    row.update({m: card["metrics"].get(m) for m in METRICS if m in card["metrics"]})
    row.update({m: v for m, v in card["metrics"].items() if m.split("@")[0] in CONDITIONAL or m in CONDITIONAL})
    row.update({m: v for m, v in sorted(card["metrics"].items()) if m.startswith("recall@50/")})  # per segment
    epoch_seconds = []
    for metrics_file in Path(run_dir).rglob("metrics.csv"):
        frame = pd.read_csv(metrics_file)
        if "train/epoch_seconds" in frame and metrics_file.stat().st_mtime >= since:
            epoch_seconds += frame["train/epoch_seconds"].dropna().tolist()
    row["train_s_per_epoch"] = sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else None
    row["epochs"] = len(epoch_seconds) or None
    if wall is not None:
        row["wall_s"] = wall
    return row, card


def plot_comparison(cards: dict[str, dict], prefix: Path) -> list[Path]:
    """recall@k curves, recall@50 vs topic diversity, per-segment recall@50 bars -> PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, card in cards.items():
        ks = sorted(int(k.split("@")[1]) for k in card["metrics"] if k.startswith("recall@") and "/" not in k)
        if ks:
            ax.plot(ks, [card["metrics"][f"recall@{k}"] for k in ks], marker="o", label=name)
    ax.set(xlabel="k", ylabel="recall@k", title="Recall at k (test)", xscale="log")
    ax.legend(fontsize=8)
    written.append(_save(fig, prefix.with_name(prefix.name + "_recall_at_k.png")))

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, card in cards.items():
        m = card["metrics"]
        if "recall@50" in m and "topic_diversity@50" in m:
            ax.scatter(m["topic_diversity@50"], m["recall@50"])
            ax.annotate(name, (m["topic_diversity@50"], m["recall@50"]), fontsize=8)
    ax.set(xlabel="topic diversity@50", ylabel="recall@50", title="Accuracy vs diversity (test)")
    written.append(_save(fig, prefix.with_name(prefix.name + "_recall_vs_diversity.png")))

    with_segments = {n: c for n, c in cards.items() if any(k.startswith("recall@50/") for k in c["metrics"])}
    segments = sorted(
        {k.split("/", 1)[1] for c in with_segments.values() for k in c["metrics"] if k.startswith("recall@50/")},
        key=_segment_order,
    )
    if segments:
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.8 / max(len(with_segments), 1)
        for i, (name, card) in enumerate(with_segments.items()):
            values = [card["metrics"].get(f"recall@50/{s}", 0.0) for s in segments]
            ax.bar([j + i * width for j in range(len(segments))], values, width=width, label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(segments))], segments, fontsize=8)
        ax.set(ylabel="recall@50", title="Recall@50 by history length (test)")
        ax.legend(fontsize=8)
        written.append(_save(fig, prefix.with_name(prefix.name + "_segments.png")))
    return written


def _segment_order(segment: str):
    """``history_10-49`` < ``history_50-199`` < ``history_200+`` (by lower bound, not alphabetically)."""
    digits = "".join(ch if ch.isdigit() else " " for ch in segment).split()
    return (int(digits[0]) if digits else 0, segment)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


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
    parser.add_argument("configs", nargs="*", type=Path, help="configs to fit + test")
    parser.add_argument("--runs", nargs="*", type=Path, default=[], help="finished run directories to read instead")
    parser.add_argument("--output", type=Path, default=None, help="Markdown file (a .csv and PNG plots beside it)")
    args = parser.parse_args(argv)
    if not args.configs and not args.runs:
        parser.error("give configs to run or --runs DIR ... to read")
    results = [run_config(c) for c in args.configs] + [summarize_run(r.name, r) for r in args.runs]
    frame = pd.DataFrame([row for row, _ in results])
    table = to_markdown(frame)
    print("\n" + table)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        command = "lightning-retrieval compare " + " ".join(str(c) for c in args.configs)
        command += (" --runs " + " ".join(str(r) for r in args.runs)) if args.runs else ""
        args.output.write_text(f"Reproduce: `{command} --output {args.output}`\n\n{table}\n")
        frame.to_csv(args.output.with_suffix(".csv"), index=False)
        plots = plot_comparison({row["config"]: card for row, card in results}, args.output.with_suffix(""))
        print(f"\nwritten: {args.output}, {args.output.with_suffix('.csv')}, " + ", ".join(str(p) for p in plots))
