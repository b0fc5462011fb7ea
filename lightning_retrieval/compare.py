"""``lightning-retrieval compare CONFIG [CONFIG ...] [--seeds 0 1 2] [--reference NAME] [--output FILE.md]``: train
and test several configs with the same CLI (once per seed), then write one Markdown + CSV table with 95% intervals
from the per-user result files, and plots with error bars.

For each config (and seed): ``fit``, then ``test`` on the best checkpoint (the ModelCheckpoint monitor) or, for
models with nothing to train, ``test`` alone. With ``--seeds`` every run gets ``--seed_everything N`` (the data
shuffling and negative sampling follow it) and its own directory ``<run dir>/seed_N``. ``--runs DIR [DIR ...]``
reads finished runs instead: a run directory, or a directory of ``seed_*`` runs (those of ``--seeds`` when given).
Arguments after ``--`` are passed to every ``fit`` and ``test`` (e.g. ``-- --trainer.max_epochs=1``). The reference
row comes first.

Cells are means over seeds with a 95% interval from a crossed bootstrap over users and seeds; ``--reference``
adds each config's paired difference to the reference (same users) with its interval and a p-value (the larger
of a paired sign-flip permutation test and the bootstrap's; :mod:`lightning_retrieval.statistics`). Corpus-level
metrics (coverage) have no per-user values: their cell is the mean over seeds, without an interval.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from lightning_retrieval.callbacks.per_user import PER_USER_PREFIX
from lightning_retrieval.callbacks.result_card import read_result_card
from lightning_retrieval.configs import run_dir_of
from lightning_retrieval.reporting import DEFAULT_COLUMNS
from lightning_retrieval.statistics import DEFAULT_RESAMPLES, bootstrap_mean, paired_difference

CONDITIONAL = ("cond_recall", "cond_ndcg", "match_rate", "scanned_per_query", "short_queries")
# multi-interest columns, present only where logged: the KDD'25 max-over-embeddings protocol (opt-in
# retrieval_evaluation.union_ks) and the collapse metric (K > 1 models)
MULTI_INTEREST = (
    "union_hit_rate@100",
    "union_recall@100",
    "union_hit_rate@1000",
    "union_recall@1000",
    "interest_similarity",
)
METRICS = DEFAULT_COLUMNS + MULTI_INTEREST  # the headline metrics of `compare` (`report` shows DEFAULT_COLUMNS)
SIGNIFICANT = "*"
MARKDOWN_DIFFS = (  # CSV: every metric
    "recall@50",
    "ndcg@50",
    "union_hit_rate@100",
    "cond_recall@10",
    "cond_recall@50",
    "match_rate@50",
)


# ---- running configs ----
def _is_trainable(config: Path) -> bool:
    model = (yaml.safe_load(config.read_text()).get("model") or {}).get("class_path", "")
    return model not in ("popularity", "PopularityRetrieval") and not model.endswith(".PopularityRetrieval")


def _newer(paths, since: float) -> list[Path]:
    return sorted((p for p in paths if p.stat().st_mtime >= since), key=lambda p: p.stat().st_mtime)


def run_config(config: Path, seed: int | None = None, overrides: list[str] = (), quiet: bool = True) -> Path:
    """Fit + test one config (with ``--seed_everything seed`` in ``<run dir>/seed_<seed>``); returns the run dir."""
    from lightning_retrieval.cli import main as lightning_retrieval

    run_dir = run_dir_of(config) if seed is None else run_dir_of(config) / f"seed_{seed}"
    extra = ["--trainer.enable_progress_bar=false"] if quiet else []
    if seed is not None:
        extra += [f"--seed_everything={seed}", f"--trainer.default_root_dir={run_dir}"]
    extra += list(overrides)

    def cli(args: list[str]) -> None:
        print("\n$ lightning-retrieval " + " ".join(args), flush=True)
        lightning_retrieval(args)

    started = time.time() - 1  # file times may be rounded down
    if _is_trainable(config):
        cli(["fit", "--config", str(config), *extra])
        ckpts = _newer(run_dir.rglob("epoch=*.ckpt"), started) or _newer(run_dir.rglob("last.ckpt"), started)
        if not ckpts:
            raise SystemExit(
                f"{config}: fit wrote no checkpoint under {run_dir}; compare needs the checkpoint in the run "
                "directory (leave ModelCheckpoint's dirpath unset so it follows trainer.default_root_dir)"
            )
        cli(["test", "--config", str(config), "--ckpt_path", str(ckpts[-1]), *extra])
    else:
        cli(["test", "--config", str(config), *extra])
    if not _newer(run_dir.rglob("result_card_test*.json"), started):
        raise SystemExit(
            f"{config}: test wrote no result card under {run_dir}; leave the loggers' save_dir unset so the run's "
            "files follow trainer.default_root_dir"
        )
    return run_dir


def seed_runs(directory: Path, seeds: list[int] | None = None) -> list[Path]:
    """The runs of a directory: its ``seed_*`` subdirectories (those of ``seeds`` if given), else the directory."""
    if not directory.is_dir():
        raise SystemExit(f"--runs {directory}: no such directory")
    if seeds is not None and (directory / f"seed_{seeds[0]}").is_dir():
        missing = [s for s in seeds if not (directory / f"seed_{s}").is_dir()]
        if missing:
            raise SystemExit(f"--runs {directory}: no run for seed(s) {missing} (looked for seed_N subdirectories)")
        return [directory / f"seed_{s}" for s in seeds]
    found = sorted(directory.glob("seed_*"), key=lambda p: (len(p.name), p.name))
    return [p for p in found if p.is_dir()] or [directory]


# ---- reading runs ----
def _newest(run_dir: Path, name: str) -> Path | None:
    found = sorted(run_dir.rglob(name), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def per_user_values(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-user values of a run's newest test evaluation: ``(values, weights)``, both indexed by user id with one
    column per metric. Conditional per-query rows are averaged per user, weighted by the user's counted queries
    (so the weighted mean over users is the logged mean over queries)."""
    frames, weights = [], []
    for stage in ("test", "test_conditional"):
        path = _newest(run_dir, f"{PER_USER_PREFIX}{stage}.parquet")
        if path is None:
            continue
        frame = pd.read_parquet(path)
        card_path = path.with_name(f"result_card_{stage}.json")
        logged = read_result_card(card_path)["metrics"] if card_path.exists() else {}
        metrics = [c for c in frame.columns if c in logged or (not logged and ("@" in c or c in CONDITIONAL))]
        frame["user_id"] = frame["user_id"].astype(str)
        counted = frame[metrics].notna().astype(np.float64)
        counted["user_id"] = frame["user_id"]
        sums = frame[metrics].fillna(0.0)
        sums["user_id"] = frame["user_id"]
        count = counted.groupby("user_id", sort=False).sum()
        total = sums.groupby("user_id", sort=False).sum()
        frames.append((total / count.where(count > 0)).rename_axis("user_id"))
        weights.append(count)
        if stage == "test":  # per-segment columns from the history buckets
            for bucket, members in frame.groupby("history_bucket"):
                key = f"recall@50/{bucket}"
                if "recall@50" in frame and (key in logged or not logged):
                    column = members.set_index("user_id")["recall@50"]
                    frames.append(column.rename(key).to_frame())
                    weights.append(column.notna().astype(np.float64).rename(key).to_frame())
    if not frames:
        return pd.DataFrame(), pd.DataFrame()
    values, counts = pd.concat(frames, axis=1), pd.concat(weights, axis=1)
    return values, counts.reindex(values.index).fillna(0.0)


def summarize_run(name: str, run_dir: Path, since: float = 0.0, wall: float | None = None) -> tuple[dict, dict]:
    """Table row and result card of one finished run directory (metric files newer than ``since``)."""
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


class RepeatedRuns:
    """One config's runs (one per seed): rows, cards and per-user ``[S, U]`` matrices aligned by user id."""

    def __init__(self, name: str, run_dirs: list[Path]):
        self.name, self.run_dirs = name, run_dirs
        summaries = [summarize_run(name, d) for d in run_dirs]
        self.rows, self.cards = [r for r, _ in summaries], [c for _, c in summaries]
        self.per_user = [per_user_values(d) for d in run_dirs]

    @property
    def card(self) -> dict:
        """The first seed's card, with every metric replaced by its mean over seeds (for plots)."""
        card = dict(self.cards[0])
        metrics = card["metrics"]
        card["metrics"] = {k: float(np.nanmean([c["metrics"].get(k, np.nan) for c in self.cards])) for k in metrics}
        return card

    def users(self, metric: str) -> pd.Index | None:
        """User ids with a counted value of ``metric`` in any seed (None: a seed has no per-user values of it)."""
        indexes = [values.index[values[metric].notna()] for values, _ in self.per_user if metric in values]
        if len(indexes) < len(self.per_user):
            return None
        return _union(indexes)

    def matrix(self, metric: str, users: pd.Index) -> tuple[np.ndarray, np.ndarray]:
        """``(values [S, U], weights [S, U])`` of ``metric`` for ``users`` (in that order)."""
        values = np.stack([v[metric].reindex(users).to_numpy(np.float64) for v, _ in self.per_user])
        weights = np.stack([w[metric].reindex(users).fillna(0.0).to_numpy(np.float64) for _, w in self.per_user])
        return values, weights


def _union(indexes: list[pd.Index]) -> pd.Index:
    out = indexes[0]
    for index in indexes[1:]:
        out = out.union(index, sort=False)
    return out


# ---- the table ----
def interval_columns(metric: str) -> tuple[str, str]:
    return f"{metric}_ci95_low", f"{metric}_ci95_high"


def headline_metrics(frame: pd.DataFrame) -> list[str]:
    """Metrics that get a paired difference: the headline ones and the conditional ones present."""
    names = [m for m in METRICS if m in frame]
    return names + [c for c in frame.columns if "/" not in c and c.split("@")[0] in CONDITIONAL and c not in names]


def summarize(
    groups: list[RepeatedRuns],
    reference: str | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per config: means over seeds with 95% intervals, and paired differences to ``reference``."""
    rows = []
    for group in groups:
        row = {"config": group.name, "model": group.rows[0]["model"], "parameters": group.rows[0]["parameters"]}
        row["seeds"] = len(group.run_dirs)
        numeric = [k for k in group.rows[0] if k not in ("config", "model", "parameters")]
        for key in numeric:
            values = [r.get(key) for r in group.rows if r.get(key) is not None]
            row[key] = float(np.mean(values)) if values else None
            users = group.users(key) if values else None
            if users is not None and len(users):
                interval = bootstrap_mean(*group.matrix(key, users), n_resamples=n_resamples, seed=seed)
                row[key] = interval.estimate
                row.update(zip(interval_columns(key), (interval.low, interval.high)))
        rows.append(row)
    frame = pd.DataFrame(rows)
    # headline metrics first, in METRICS order, whichever config's row has them (e.g. only K > 1 models)
    leading = ["config", "model", "parameters", "seeds"]
    leading += [c for m in METRICS for c in (m, *interval_columns(m)) if c in frame]
    frame = frame[leading + [c for c in frame.columns if c not in leading]]
    if reference is not None:
        frame = add_paired_differences(frame, groups, reference, n_resamples, seed)
    return frame


def add_paired_differences(
    frame: pd.DataFrame, groups: list[RepeatedRuns], reference: str, n_resamples: int, seed: int
) -> pd.DataFrame:
    by_name = {g.name: g for g in groups}
    if reference not in by_name:
        raise SystemExit(f"--reference {reference!r} is not one of the compared configs: {', '.join(by_name)}")
    ref = by_name[reference]
    columns: dict[str, list] = {}
    for metric in headline_metrics(frame):
        ref_users = ref.users(metric)
        cells = {f"{metric}_diff": [], f"{metric}_diff_ci95_low": [], f"{metric}_diff_ci95_high": [], f"{metric}_p": []}
        for group in groups:
            users = group.users(metric)
            result = None
            if group is not ref and users is not None and ref_users is not None:
                common = _union([users, ref_users])  # users counted in only one: NaN, left out of the pairing
                if len(common):
                    a, wa = group.matrix(metric, common)
                    b, wb = ref.matrix(metric, common)
                    result = paired_difference(a, b, wa, wb, n_resamples=n_resamples, seed=seed)
            values = (None,) * 4 if result is None else (result.estimate, result.low, result.high, result.p_value)
            for column, value in zip(cells, values):
                cells[column].append(value)
        if any(v is not None for v in cells[f"{metric}_p"]):
            columns.update(cells)
    out = pd.concat([frame, pd.DataFrame(columns, index=frame.index)], axis=1)
    out.attrs["reference"] = reference
    return out


def is_significant(row, metric: str, alpha: float = 0.05) -> bool:
    """p < alpha (paired sign-flip test) and the difference's 95% interval excludes 0."""
    p, low, high = row.get(f"{metric}_p"), row.get(f"{metric}_diff_ci95_low"), row.get(f"{metric}_diff_ci95_high")
    if p is None or pd.isna(p):
        return False
    return bool(p < alpha and not (low <= 0.0 <= high))


def to_markdown(frame: pd.DataFrame) -> str:
    """Markdown table: ``mean [low, high]`` cells; with a reference, ``Δ [low, high] p`` cells, ``*`` significant."""
    seeds = int(frame["seeds"].max()) if "seeds" in frame else 1
    hidden = {c for c in frame.columns if c.endswith(("_ci95_low", "_ci95_high", "_p"))}
    hidden |= {c for c in frame.columns if c.endswith("_diff")}
    diffs = [m for m in MARKDOWN_DIFFS if f"{m}_diff" in frame]
    cols = [c for c in frame.columns if c not in hidden]

    def number(value, column) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return "-"
        if column == "parameters":
            return f"{int(value):,}"
        if column in ("train_s_per_epoch", "wall_s"):
            return f"{value:.1f}"
        if column in ("epochs", "seeds"):
            return str(int(value))
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    def cell(row, column) -> str:
        text = number(row[column], column)
        low, high = interval_columns(column)
        if low in row and not pd.isna(row[low]):
            text += f" [{row[low]:.4f}, {row[high]:.4f}]"
        return text

    def diff_cell(row, metric) -> str:
        value = row[f"{metric}_diff"]
        if value is None or pd.isna(value):
            return "-"
        mark = f" {SIGNIFICANT}" if is_significant(row, metric) else ""
        low, high, p = row[f"{metric}_diff_ci95_low"], row[f"{metric}_diff_ci95_high"], row[f"{metric}_p"]
        p_text = f"p={p:.3f}" if p >= 0.001 else "p<0.001"
        return f"{value:+.4f} [{low:+.4f}, {high:+.4f}] {p_text}{mark}"

    reference = frame.attrs.get("reference")
    headers = cols + [f"Δ {m} vs {reference}" for m in diffs]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join([cell(row, c) for c in cols] + [diff_cell(row, m) for m in diffs]) + " |")
    note = (
        f"Cells: mean over {seeds} seed(s) [95% interval: bootstrap over users and seeds, "
        f"{DEFAULT_RESAMPLES if 'n_resamples' not in frame.attrs else frame.attrs['n_resamples']} resamples]; "
        "coverage is corpus-level (mean over seeds, no interval)."
    )
    if reference:
        note += (
            f" Δ: paired difference to {reference} on the same users [95% bootstrap interval]; p: the larger of a "
            "paired sign-flip permutation test over users and the users-and-seeds bootstrap's two-sided p; "
            f"{SIGNIFICANT}: p < 0.05 and the interval excludes 0."
        )
    return note + "\n\n" + "\n".join(lines)


# ---- plots ----
def plot_comparison(cards: dict[str, dict], prefix: Path, frame: pd.DataFrame | None = None) -> list[Path]:
    """recall@k curves, recall@50 vs topic diversity, per-segment recall@50 bars -> PNG files; with ``frame``
    (from :func:`summarize`), 95% intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {} if frame is None else {r["config"]: r for _, r in frame.iterrows()}

    def err(name: str, metric: str, value: float) -> list[float] | None:
        low, high = interval_columns(metric)
        row = rows.get(name)
        if row is None or low not in row or pd.isna(row[low]):
            return None
        return [max(value - row[low], 0.0), max(row[high] - value, 0.0)]

    def errors(name: str, metrics: list[str], values: list[float]):
        bars = [err(name, m, v) or [0.0, 0.0] for m, v in zip(metrics, values)]
        return np.array(bars).T

    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, card in cards.items():
        ks = sorted(int(k.split("@")[1]) for k in card["metrics"] if k.startswith("recall@") and "/" not in k)
        if ks:
            keys = [f"recall@{k}" for k in ks]
            values = [card["metrics"][key] for key in keys]
            ax.errorbar(ks, values, yerr=errors(name, keys, values), marker="o", capsize=3, label=name)
    ax.set(xlabel="k", ylabel="recall@k", title="Recall at k (test, 95% intervals)", xscale="log")
    ax.legend(fontsize=8)
    written.append(_save(fig, prefix.with_name(prefix.name + "_recall_at_k.png")))

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, card in cards.items():
        m = card["metrics"]
        if "recall@50" in m and "topic_diversity@50" in m:
            x, y = m["topic_diversity@50"], m["recall@50"]
            xerr, yerr = err(name, "topic_diversity@50", x), err(name, "recall@50", y)
            ax.errorbar(
                x,
                y,
                xerr=None if xerr is None else np.array(xerr)[:, None],
                yerr=None if yerr is None else np.array(yerr)[:, None],
                fmt="o",
                capsize=3,
            )
            ax.annotate(name, (x, y), fontsize=8)
    ax.set(xlabel="topic diversity@50", ylabel="recall@50", title="Accuracy vs diversity (test, 95% intervals)")
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
            keys = [f"recall@50/{s}" for s in segments]
            values = [card["metrics"].get(key, 0.0) for key in keys]
            positions = [j + i * width for j in range(len(segments))]
            ax.bar(positions, values, width=width, label=name, yerr=errors(name, keys, values), capsize=2)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(segments))], segments, fontsize=8)
        ax.set(ylabel="recall@50", title="Recall@50 by history length (test, 95% intervals)")
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


# ---- command ----
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightning-retrieval compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", type=Path, help="configs to fit + test")
    parser.add_argument("--runs", nargs="*", type=Path, default=[], help="finished run directories to read instead")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="fit + test each config once per seed")
    parser.add_argument("--reference", default=None, help="config name (file stem) to pair every other config with")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap / permutation draws")
    parser.add_argument("--output", type=Path, default=None, help="Markdown file (a .csv and PNG plots beside it)")
    parser.add_argument("--wandb", default=None, metavar="PROJECT", help="log the table and intervals to W&B")
    return parser


def main(argv: list[str]) -> None:
    argv = list(argv)
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.configs and not args.runs:
        parser.error("give configs to run or --runs DIR ... to read")
    names = [c.stem for c in args.configs] + [r.name for r in args.runs]
    if len(set(names)) != len(names):
        parser.error(f"two configs or runs share a name: {names}")
    groups = []
    for config in args.configs:
        runs = [run_config(config, seed, overrides) for seed in args.seeds] if args.seeds else None
        groups.append(RepeatedRuns(config.stem, runs or [run_config(config, None, overrides)]))
    groups += [RepeatedRuns(r.name, seed_runs(r, args.seeds)) for r in args.runs]
    groups.sort(key=lambda g: g.name != args.reference)  # the reference first, the others in the given order
    frame = summarize(groups, args.reference, args.resamples)
    frame.attrs["n_resamples"] = args.resamples
    table = to_markdown(frame)
    print("\n" + table)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        command = "lightning-retrieval compare " + " ".join(str(c) for c in args.configs)
        command += (" --runs " + " ".join(str(r) for r in args.runs)) if args.runs else ""
        command += (" --seeds " + " ".join(map(str, args.seeds))) if args.seeds else ""
        command += f" --reference {args.reference}" if args.reference else ""
        command += f" --output {args.output}" + (" -- " + " ".join(overrides) if overrides else "")
        args.output.write_text(f"Reproduce: `{command}`\n\n{table}\n")
        frame.to_csv(args.output.with_suffix(".csv"), index=False)
        plots = plot_comparison({g.name: g.card for g in groups}, args.output.with_suffix(""), frame)
        print(f"\nwritten: {args.output}, {args.output.with_suffix('.csv')}, " + ", ".join(str(p) for p in plots))
    if args.wandb:
        from lightning_retrieval.tracking.wandb_setup import log_comparison

        log_comparison(frame, args.wandb, name=args.output.stem if args.output else "compare")
