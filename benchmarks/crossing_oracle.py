"""Reference points of docs/crossing_synthetic_results.md: the oracle's and a random ranking's recall@k on
``synthetic_crosses``, on the same evaluation users, targets and excluded (seen) items as the models.

The oracle ranks each user's unseen items by the true generating probabilities
(``SyntheticCrossesSource.interaction_probabilities``); items of one cell tie, so its recall is the expected value
over random tie-breaking: a target with ``g`` unseen items scored above it and ``e`` others tied with it is in the
top k with probability ``clip((k - g) / (e + 1), 0, 1)``. No model can do better in expectation.

    python benchmarks/crossing_oracle.py --cross-strength 0 0.5 1
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from lightning_retrieval.data.datamodule import RetrievalDataModule
from lightning_retrieval.data.synthetic_crosses import SyntheticCrossesSource


def reference_recall(probabilities: np.ndarray, dm: RetrievalDataModule, stage: str, k: int) -> dict[str, float]:
    """``{"oracle": ..., "random": ...}`` expected recall@k over the stage's users (one target or more each)."""
    evaluation = dm.evaluation_set(stage)
    user_ids, item_ids = np.asarray(dm.user_ids), np.asarray(dm.item_ids)
    scores = probabilities[user_ids[evaluation.users]][:, item_ids]  # [U, I] in the datamodule's item order
    oracle, random = [], []
    for row in range(len(evaluation)):  # one-off reference computation, U ~ 600
        seen = evaluation.exclude.row(row)
        candidates = np.ones(scores.shape[1], dtype=bool)
        candidates[seen] = False
        targets = evaluation.targets.row(row)
        s = scores[row][candidates]
        hits = []
        for t in targets:
            above = int((s > scores[row, t]).sum())
            tied = int((s == scores[row, t]).sum()) - 1
            hits.append(np.clip((k - above) / (tied + 1), 0.0, 1.0))
        oracle.append(np.mean(hits))
        random.append(min(1.0, k / candidates.sum()))
    return {"oracle": float(np.mean(oracle)), "random": float(np.mean(random))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cross-strength", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--num-users", type=int, default=600)
    parser.add_argument("--interactions-per-user", type=int, default=20)
    args = parser.parse_args()
    for strength in args.cross_strength:
        # the data of configs/crossing_synthetic/data_cross*.yaml (data_sparse_cross1: 3000 users, 4 interactions)
        source = SyntheticCrossesSource(
            cross_strength=strength,
            num_users=args.num_users,
            num_items=600,
            interactions_per_user=args.interactions_per_user,
            seed=0,
        )
        dm = RetrievalDataModule(source, split="leave_last_out", val_items=1, test_items=1, max_history=20)
        dm.setup()
        probabilities = source.interaction_probabilities()
        for stage in ("val", "test"):
            result = reference_recall(probabilities, dm, stage, args.k)
            row = {"cross_strength": strength, "users": args.num_users, "per_user": args.interactions_per_user}
            print(json.dumps({**row, "stage": stage, "k": args.k, **result}), flush=True)


if __name__ == "__main__":
    main()
