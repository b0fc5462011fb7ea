"""Do a model's served queries find the user's planted interests? Trained synthetic-benchmark runs, by number of
interests.

    python benchmarks/synthetic_interests_diagnostics.py [--models two_tower dcm multihead_attention]
        [--seed 0] [--prefix synthetic_] [--output docs/synthetic_interests_diagnostics.md]

Each run's test checkpoint (``runs/<prefix><model>/seed_N``, the newest ``epoch=*.ckpt``, the one ``compare``
tests) is evaluated on the test users with ``benchmarks/dcm_gap.py``'s collector (the framework's own test loop,
evaluator and round-robin merger). Per user, with the planted item clusters of ``synthetic_interests``:

- ``merged R@50``: the round-robin merge of the served queries (the table's number); ``union R@50``: a target
  counts if any served query's own top-50 holds it; ``best slot R@50``: the best single served query's top-50;
- ``in own clusters``: share of the merged top-50 that lies in the user's own clusters (the clusters of their
  history); ``own clusters covered``: share of those clusters with at least one item in the merged top-50;
- ``slot purity``: per served query, the share of its own top-50 in its most frequent cluster (1 = the query is
  one cluster); ``distinct slot clusters``: distinct most-frequent clusters over the served queries, divided by
  ``min(served, own clusters)`` (1 = every query on a different interest);
- ``served``: queries per user; ``query cosine``: mean pairwise cosine of the served queries.

Means over the users of each segment of ``num_interests`` (1, 2, >= 3).

Two more tables explain where a multi-interest model's served queries go (issue 12's DCM fix):

- by routing mass (DCM: ``Σ_l w_lk``, the history items a slot holds, in routing weight): per served query, the
  share of its own top-50 in the user's own clusters (``--slot-models``);
- the space the interest module clusters (``--space-model``'s checkpoint): for items grouped by their training
  count, the share whose nearest planted cluster (cosine to the count-weighted mean of each cluster's vectors) is
  their own, in the item table's ID rows (what ``history_space: ids`` clusters) and in item-tower vectors
  (``history_space: items``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from _training import build_from_config
from dcm_gap import QueryCollector, hits_of
from synthetic_regime import ROOT

from lightning_retrieval.arrays import take_rows
from lightning_retrieval.metrics.interests import interest_similarity
from lightning_retrieval.retrieval.evaluator import RetrievalEvaluator
from lightning_retrieval.retrieval.index import ExactIndex
from lightning_retrieval.retrieval.merging import RoundRobinMerger, first_occurrences

DEPTH = 50


def per_user(config: Path, run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per test user of the run's test checkpoint (the quantities of the module docstring) and one per
    served query (its routing mass, NaN without one, and the share of its top-50 in the user's own clusters)."""
    ckpt = max(run_dir.rglob("epoch=*.ckpt"), key=lambda p: p.stat().st_mtime)
    model, datamodule = build_from_config(str(config))
    collector = QueryCollector()
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[collector],
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.test(model, datamodule=datamodule, ckpt_path=str(ckpt), verbose=False)
    out = collector.collected
    rows = out["eval_row"]
    eval_set = datamodule.evaluation_set("test")
    targets, exclude = take_rows(eval_set.targets, rows), take_rows(eval_set.exclude, rows)
    vectors, served = out["user_embeddings"], out["served"].astype(bool)  # [U, K, D], [U, K]
    n_users, k = served.shape
    n_items = datamodule.num_items
    item_cluster = datamodule.source.item_clusters()[datamodule.item_ids.astype(np.int64)]  # [N] by item index
    users, slots = np.nonzero(served)
    found, scores, _ = RetrievalEvaluator(ks=[DEPTH], metrics=[]).retrieve(
        ExactIndex().build(collector.items), vectors[users, slots], take_rows(exclude, users), DEPTH
    )
    grid = np.full((n_users, k, DEPTH), -1, dtype=np.int64)
    grid_scores = np.full((n_users, k, DEPTH), -np.inf, dtype=np.float32)
    grid[users, slots], grid_scores[users, slots] = found, scores
    merged, _ = RoundRobinMerger().merge(grid, grid_scores, served, DEPTH)  # [U, DEPTH]
    keys, n_targets, user_rows = targets.keys(n_items), np.maximum(targets.lengths, 1), np.arange(n_users)

    def recall(items: np.ndarray) -> np.ndarray:
        return (hits_of(items, user_rows, keys, n_items) & first_occurrences(items)).sum(1) / n_targets

    # the user's own clusters: those of their history (the excluded seen items), as a [U, C] indicator
    n_clusters = int(item_cluster.max()) + 1
    own = np.zeros((n_users, n_clusters), dtype=bool)
    seen_rows = np.repeat(user_rows, exclude.lengths)
    own[seen_rows, item_cluster[exclude.values]] = True
    in_list = merged >= 0
    cluster_of = np.where(in_list, item_cluster[np.maximum(merged, 0)], -1)
    hits_own = own[user_rows[:, None], np.maximum(cluster_of, 0)] & in_list
    covered = np.zeros_like(own)
    covered[np.repeat(user_rows, DEPTH)[in_list.ravel()], cluster_of[in_list]] = True
    # per served slot: its top-50's most frequent cluster and that cluster's share
    slot_clusters = np.where(grid >= 0, item_cluster[np.maximum(grid, 0)], n_clusters)  # [U, K, DEPTH]
    counts = np.zeros((n_users, k, n_clusters + 1))
    np.add.at(counts, (user_rows[:, None, None], np.arange(k)[None, :, None], slot_clusters), 1.0)
    counts = counts[..., :n_clusters]
    purity = counts.max(-1) / np.maximum(counts.sum(-1), 1)  # [U, K]
    top_cluster = np.where(served, counts.argmax(-1), -1)
    ordered = np.sort(top_cluster, 1)  # unused slots (-1) first
    new = np.concatenate([ordered[:, :1] >= 0, ordered[:, 1:] != ordered[:, :-1]], 1) & (ordered >= 0)
    distinct = new.sum(1)
    slot_own = own[user_rows[:, None, None], np.minimum(slot_clusters, n_clusters - 1)] & (grid >= 0)
    mass = out.get("mass")
    slots = pd.DataFrame(
        {
            "mass": (mass if mass is not None else np.full(served.shape, np.nan))[served],
            "interest norm": np.linalg.norm(out["interests"], axis=-1)[served] if "interests" in out else np.nan,
            "in own clusters": (slot_own.sum(-1) / np.maximum((grid >= 0).sum(-1), 1))[served],
        }
    )
    slot_recall = np.stack([recall(np.where(served[:, j, None], grid[:, j], -1)) for j in range(k)], 1)
    similarity = interest_similarity(vectors, served) if k > 1 else np.full(n_users, np.nan)
    segments = datamodule.user_segments("test")["num_interests"][rows]
    return pd.DataFrame(
        {
            "num_interests": segments,
            "merged R@50": recall(merged),
            "union R@50": recall(np.where(served[:, :, None], grid, -1).reshape(n_users, -1)),
            "best slot R@50": np.where(served, slot_recall, -1).max(1),
            "in own clusters": hits_own.sum(1) / np.maximum(in_list.sum(1), 1),
            "own clusters covered": (covered & own).sum(1) / np.maximum(own.sum(1), 1),
            "slot purity": np.where(served, purity, 0).sum(1) / np.maximum(served.sum(1), 1),
            "distinct slot clusters": distinct / np.maximum(np.minimum(served.sum(1), own.sum(1)), 1),
            "served": served.sum(1).astype(np.float64),
            "query cosine": np.asarray(similarity, dtype=np.float64),
        }
    ), slots


def space_separation(config: Path, run_dir: Path) -> pd.DataFrame:
    """Share of items nearest their own planted cluster in ID-row space and in item-tower space, by training count."""
    ckpt = max(run_dir.rglob("epoch=*.ckpt"), key=lambda p: p.stat().st_mtime)
    model, datamodule = build_from_config(str(config))
    datamodule.setup("test")
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"])
    model.eval()
    cluster = torch.from_numpy(datamodule.source.item_clusters()[datamodule.item_ids.astype(np.int64)])
    counts = torch.from_numpy(datamodule.builder_for("test").item_counts).float()
    n = len(cluster)
    with torch.no_grad():
        ids = model.embeddings.sequence("history", torch.arange(n)[None], torch.ones(1, n, dtype=torch.bool))[0]
        tower = torch.cat([model.embed_items(b) for b in datamodule.corpus_batches("test")])
    bins = [(0, 0), (1, 2), (3, 5), (6, 10), (11, 30), (31, None)]
    rows = []
    for low, high in bins:
        selected = (counts >= low) & ((counts <= high) if high is not None else True)
        row = {"training count": f"{low}-{high}" if high is not None else f">= {low}", "items": int(selected.sum())}
        for name, vectors in (("ID rows", ids), ("item tower", tower)):
            unit = torch.nn.functional.normalize(vectors, dim=-1)
            centres = torch.zeros(int(cluster.max()) + 1, unit.shape[1]).index_add_(0, cluster, unit * counts[:, None])
            nearest = (unit @ torch.nn.functional.normalize(centres, dim=-1).T).argmax(-1)
            row[f"nearest own cluster: {name}"] = float((nearest == cluster)[selected].float().mean())
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["two_tower", "dcm", "dcm_items", "multihead_attention"])
    parser.add_argument("--slot-models", nargs="+", default=["dcm", "dcm_items"])
    parser.add_argument("--space-model", default="dcm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefix", default="synthetic_")
    parser.add_argument("--output", type=Path, default=ROOT / "docs/synthetic_interests_diagnostics.md")
    args = parser.parse_args()
    frames, slot_tables = [], []
    for model in args.models:
        name = f"{args.prefix}{model}"
        config = ROOT / "configs/synthetic_interests" / f"{name}.yaml"
        frame, slots = per_user(config, ROOT / "runs" / name / f"seed_{args.seed}")
        if model in args.slot_models:
            edges = [0, 0.5, 1, 1.5, 2.5, 4.5, np.inf]
            slots["routing mass"] = pd.cut(slots["mass"], edges).astype(str)
            grouped = slots.groupby("routing mass", sort=False).agg(
                **{"served queries": ("mass", "size"), "interest norm": ("interest norm", "mean"),
                   "in own clusters": ("in own clusters", "mean")}
            )  # fmt: skip
            grouped = grouped.reindex([str(i) for i in pd.cut([], edges).categories]).dropna()
            slot_tables.append(grouped.reset_index().assign(model=model).set_index("model").reset_index())
        interests = frame.pop("num_interests").to_numpy()
        frames.append(frame.assign(model=model, interests=np.where(interests >= 3, ">=3", interests.astype(str))))
    table = pd.concat(frames).groupby(["model", "interests"], sort=False).mean()
    table["users"] = pd.concat(frames).groupby(["model", "interests"], sort=False).size()
    table = table.reindex(pd.MultiIndex.from_product([args.models, ["1", "2", ">=3"]], names=table.index.names))
    text = (
        "# Synthetic multi-interest benchmark: do the served queries find the planted interests?\n\n"
        f"`python benchmarks/synthetic_interests_diagnostics.py --models {' '.join(args.models)} --seed {args.seed} "
        f"--prefix {args.prefix}` (the test checkpoints of `docs/synthetic_interests_results*.md`'s seed "
        f"{args.seed} runs). Columns: see the script's docstring; means over the test users of each segment.\n\n"
        + markdown(table.reset_index())
        + "\n\n## Served queries by routing mass\n\nPer served query of the test users: the share of its own top-50 "
        "in the user's own clusters, by the query's routing mass (DCM's Σ_l w_lk; about the history items it "
        "holds), and the mean norm of the interest the user tower was given.\n\n"
        + markdown(pd.concat(slot_tables))
        + f"\n\n## The space the interests are clustered in ({args.prefix}{args.space_model}, seed {args.seed})\n\n"
        "Share of items whose nearest planted cluster (cosine to the count-weighted mean of the cluster's vectors) "
        "is their own, by the item's training count: in the ID rows DCM clusters with `history_space: ids` and in "
        "the item-tower vectors it clusters with `history_space: items`.\n\n"
        + markdown(
            space_separation(
                ROOT / "configs/synthetic_interests" / f"{args.prefix}{args.space_model}.yaml",
                ROOT / "runs" / f"{args.prefix}{args.space_model}" / f"seed_{args.seed}",
            )
        )
        + "\n"
    )
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
