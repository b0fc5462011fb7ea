"""Recall@50 by number of interests on the synthetic multi-interest benchmark, from the runs of
``make tables-synthetic-interests`` (``runs/synthetic_<model>/seed_N`` and ``runs/synthetic_users_<model>/seed_N``).

    python benchmarks/synthetic_interests_curve.py [--seeds 0 1 2] [--output-dir docs]

Writes ``synthetic_interests_by_interests.md`` (+ ``.csv``) and ``synthetic_interests_curve.png`` under
``--output-dir``. Per split and model, from each seed's ``per_user_test.parquet``:

- recall@50 of the users with 1, 2, 3, 4 and >= 3 interests (``num_interests``: clusters in the user's
  interactions): mean over seeds and users with the crossed users x seeds bootstrap interval
  (:func:`lightning_retrieval.statistics.bootstrap_mean`), and at >= 3 the paired difference to the two-tower
  (:func:`~lightning_retrieval.statistics.paired_difference`);
- the drop from 1 to >= 3 interests and the share of the two-tower's drop the model closes,
  ``1 - drop_model / drop_two_tower``, with a percentile interval from a paired bootstrap (users resampled inside
  each segment, the same draws for the model and the two-tower; per-user values averaged over seeds);
- under leave_last_out, the generator's Bayes oracle (``benchmarks/synthetic_regime.py``) as the ceiling;
- ``interest_similarity`` (mean pairwise cosine of a user's served queries) where the runs logged it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd
from synthetic_regime import ROOT, committed_source_args, oracle_by_interests

from lightning_retrieval.data.synthetic import SyntheticInterestsSource
from lightning_retrieval.statistics import bootstrap_mean, paired_difference

MODELS = (
    "two_tower",
    "dcm",
    "dcm_mass",
    "dcm_items",
    "dcm_items_mass",
    "multihead_attention",
    "multihead_attention_items",
    "dynamic_routing",
    "preclustering",
)
SPLITS = {"leave_last_out": "synthetic_", "users": "synthetic_users_"}
SEGMENTS = ("1", "2", "3", "4", ">=3")
METRIC = "recall@50"
RESAMPLES = 2000


def in_segment(num_interests: np.ndarray, segment: str) -> np.ndarray:
    return num_interests >= 3 if segment == ">=3" else num_interests == int(segment)


def read_runs(run_root: Path, seeds: list[int]) -> tuple[pd.DataFrame, pd.Series]:
    """``(values [U, S] of every per-user metric column stacked as (metric, seed) columns, num_interests [U])``."""
    frames = []
    for seed in seeds:
        found = list((run_root / f"seed_{seed}").rglob("per_user_test.parquet"))
        if not found:
            raise SystemExit(f"{run_root}/seed_{seed}: no per_user_test.parquet (run make tables-synthetic-interests)")
        frame = pd.read_parquet(max(found, key=os.path.getmtime)).set_index("user_id")
        frames.append(frame)
    users = frames[0].index
    for frame in frames[1:]:
        if not frame.index.equals(users):
            raise SystemExit(f"{run_root}: the seeds evaluated different users")
    metrics = [c for c in frames[0].columns if c == METRIC or c.startswith("interest_similarity")]
    values = pd.concat({(m, s): f[m] for m in metrics for s, f in zip(seeds, frames)}, axis=1)
    return values, frames[0]["num_interests"]


def share_closed(model: np.ndarray, reference: np.ndarray, segments: np.ndarray, seed: int = 0) -> dict:
    """Two readings of "the share of the reference's drop a model closes" (drop: mean over 1-interest users - mean
    over >= 3-interest users of per-user values ``[U]``), each with a 95% percentile interval from a paired bootstrap
    inside each segment: ``closed`` = ``1 - drop(model) / drop(reference)`` (the issue's; a model also "closes"
    the drop by losing on 1-interest users) and ``gain`` = ``(model - reference at >= 3) / drop(reference)`` (only
    what the model adds for >= 3-interest users)."""
    rng = np.random.default_rng(seed)
    one, many = np.flatnonzero(segments == 1), np.flatnonzero(segments >= 3)
    draws_one = one[rng.integers(0, len(one), (RESAMPLES, len(one)))]
    draws_many = many[rng.integers(0, len(many), (RESAMPLES, len(many)))]

    def drop(values, a, b):
        return values[a].mean(-1) - values[b].mean(-1)

    def shares(a, b):
        base = drop(reference, a, b)
        return 1 - drop(model, a, b) / base, (model[b].mean(-1) - reference[b].mean(-1)) / base

    out = {}
    for name, estimate, replicates in zip(("closed", "gain"), shares(one, many), shares(draws_one, draws_many)):
        low, high = np.nanpercentile(replicates, [2.5, 97.5])
        out.update({name: float(estimate), f"{name}_low": float(low), f"{name}_high": float(high)})
    return out


def split_table(runs_root: Path, prefix: str, seeds: list[int]) -> pd.DataFrame:
    present = [m for m in MODELS if (runs_root / f"{prefix}{m}").is_dir()]
    if "two_tower" not in present:
        raise SystemExit(f"{runs_root / prefix}two_tower: no runs (run make tables-synthetic-interests)")
    if len(present) < len(MODELS):
        print(f"{prefix}*: no runs of {', '.join(sorted(set(MODELS) - set(present)))}; left out of the table")
    runs = {m: read_runs(runs_root / f"{prefix}{m}", seeds) for m in present}
    reference_values, segments = runs["two_tower"]
    rows = []
    for model, (values, _) in runs.items():
        if not values.index.equals(reference_values.index):
            raise SystemExit(f"{prefix}{model}: evaluated other users than {prefix}two_tower")
        recall = values[METRIC].to_numpy().T  # [S, U]
        reference = reference_values[METRIC].to_numpy().T
        row = {"model": model}
        for segment in SEGMENTS:
            mask = in_segment(segments.to_numpy(), segment)
            interval = bootstrap_mean(recall[:, mask], n_resamples=RESAMPLES)
            row[segment], row[f"{segment}_low"], row[f"{segment}_high"] = interval.estimate, interval.low, interval.high
            if model != "two_tower" and segment == ">=3":
                diff = paired_difference(recall[:, mask], reference[:, mask], n_resamples=RESAMPLES)
                row["diff>=3"], row["diff>=3_low"], row["diff>=3_high"], row["diff>=3_p"] = (
                    diff.estimate, diff.low, diff.high, diff.p_value,
                )  # fmt: skip
        row["drop"] = row["1"] - row[">=3"]
        if model != "two_tower":
            row.update(share_closed(recall.mean(0), reference.mean(0), segments.to_numpy()))
        similarity = [c for c in values.columns.get_level_values(0).unique() if c.startswith("interest_similarity")]
        for column in similarity:
            interval = bootstrap_mean(values[column].to_numpy().T, n_resamples=RESAMPLES)
            row[column], row[f"{column}_low"], row[f"{column}_high"] = interval.estimate, interval.low, interval.high
        rows.append(row)
    # every multi-interest model against the best one at >= 3 interests (paired, same users)
    many = in_segment(segments.to_numpy(), ">=3")
    best = max((r for r in rows if r["model"] != "two_tower"), key=lambda r: r[">=3"], default=None)
    for row in rows:
        if best is not None and row["model"] not in ("two_tower", best["model"]):
            a, b = (runs[m][0][METRIC].to_numpy().T[:, many] for m in (row["model"], best["model"]))
            diff = paired_difference(a, b, n_resamples=RESAMPLES)
            row.update({"vs_best": diff.estimate, "vs_best_low": diff.low, "vs_best_high": diff.high})
            row["vs_best_p"] = diff.p_value
    return pd.DataFrame(rows)


def oracle_row() -> dict:
    oracle = oracle_by_interests(SyntheticInterestsSource(**committed_source_args()))
    row = {"model": "oracle (ceiling)"}
    for segment in SEGMENTS:
        mask = in_segment(oracle["num_interests"].to_numpy(), segment)
        interval = bootstrap_mean(oracle["oracle_hit"].to_numpy()[mask], n_resamples=RESAMPLES)
        row[segment], row[f"{segment}_low"], row[f"{segment}_high"] = interval.estimate, interval.low, interval.high
    row["drop"] = row["1"] - row[">=3"]
    return row


def to_markdown(frame: pd.DataFrame) -> str:
    def cell(row, key, signed=False):
        value = row.get(key)
        if value is None or pd.isna(value):
            return "-"
        fmt = "{:+.3f}" if signed else "{:.3f}"
        text = fmt.format(value)
        if f"{key}_low" in row and not pd.isna(row[f"{key}_low"]):
            text += f" [{fmt.format(row[f'{key}_low'])}, {fmt.format(row[f'{key}_high'])}]"
        return text

    def difference(row, key):
        if key not in row or pd.isna(row[key]):
            return "-"
        p = row[f"{key}_p"]
        star = " *" if p < 0.05 and not row[f"{key}_low"] <= 0 <= row[f"{key}_high"] else ""
        return cell(row, key, signed=True) + (f" p={p:.3f}" if p >= 0.001 else " p<0.001") + star

    similarity = [c for c in frame.columns if c.startswith("interest_similarity") and not c.endswith(("_low", "_high"))]
    headers = [f"R@50 {s} interest{'s' if s != '1' else ''}" for s in SEGMENTS]
    headers += ["Δ R@50 (>=3) vs two-tower", "drop 1 → >=3", "share of two-tower drop closed"]
    headers += [">=3 gain / two-tower drop", "Δ R@50 (>=3) vs best", *similarity]
    lines = ["| model | " + " | ".join(headers) + " |", "|" + "---|" * (len(headers) + 1)]
    for _, row in frame.iterrows():
        diff = difference(row, "diff>=3")
        cells = [cell(row, s) for s in SEGMENTS] + [diff, cell(row, "drop"), cell(row, "closed", signed=True)]
        cells += [cell(row, "gain", signed=True), difference(row, "vs_best")]
        cells += [cell(row, c) for c in similarity]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(tables: dict[str, pd.DataFrame], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4.2), sharey=True, squeeze=False)
    x = np.arange(1, 5)
    for ax, (split, frame) in zip(axes[0], tables.items()):
        for i, (_, row) in enumerate(frame.iterrows()):
            mean = np.array([row[s] for s in SEGMENTS[:4]])
            err = np.array([[row[s] - row[f"{s}_low"], row[f"{s}_high"] - row[s]] for s in SEGMENTS[:4]]).T
            oracle = row["model"] not in MODELS
            color = "black" if oracle else plt.get_cmap("tab10")(MODELS.index(row["model"]))
            ax.errorbar(x + 0.04 * (i - 2), mean, yerr=err, fmt="--" if oracle else "-o", color=color, capsize=3,
                        label=row["model"])  # fmt: skip
        ax.set_title(f"split: {split}")
        ax.set_xlabel("number of interests (clusters in the user's interactions)")
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("test recall@50 (95% interval)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=list(SPLITS))
    parser.add_argument("--output-dir", type=Path, default=ROOT / "docs")
    parser.add_argument("--runs-root", type=Path, default=ROOT / "runs")
    args = parser.parse_args()
    tables = {}
    for split in args.splits:
        frame = split_table(args.runs_root, SPLITS[split], args.seeds)
        if split == "leave_last_out":
            frame = pd.concat([frame, pd.DataFrame([oracle_row()])], ignore_index=True)
        tables[split] = frame
    args.output_dir.mkdir(parents=True, exist_ok=True)
    out = args.output_dir / "synthetic_interests_by_interests.md"
    sections = [
        "# Synthetic multi-interest benchmark: recall@50 by number of interests\n",
        f"Made by `make -o .venv/.installed-cpu tables-synthetic-interests` (`benchmarks/synthetic_interests_curve.py`"
        f" over the runs of `docs/synthetic_interests_results*.md`), seeds {' '.join(map(str, args.seeds))}. Cells: "
        "mean over seeds and users [95% interval: bootstrap over users and seeds]. Δ: paired difference to the "
        "two-tower on the same users, p from statistics.paired_difference (the larger of a paired sign-flip test "
        "and the users-and-seeds bootstrap), * p < 0.05 and interval excludes 0. Share of "
        "the two-tower's drop closed: 1 - drop(model) / drop(two-tower); >= 3 gain / two-tower drop: (model - "
        "two-tower at >= 3) / drop(two-tower), which a loss on 1-interest users cannot raise (both with a paired "
        "bootstrap interval). vs best: paired difference to the multi-interest model with the highest >= 3 recall. "
        "The oracle ranks "
        "by the generator's own next-item probabilities: the ceiling (leave_last_out only). Plot: "
        "`synthetic_interests_curve.png`.\n",
    ]
    for split, frame in tables.items():
        sections.append(f"## split: {split}\n\n{to_markdown(frame)}\n")
    out.write_text("\n".join(sections))
    pd.concat(tables, names=["split"]).to_csv(out.with_suffix(".csv"))
    plot(tables, args.output_dir / "synthetic_interests_curve.png")
    print(out.read_text())


if __name__ == "__main__":
    main()
