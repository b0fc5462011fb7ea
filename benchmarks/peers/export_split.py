"""Export our leave-last-out split of the embedded MovieLens data for the peers (runs in our venv).

Writes ``benchmarks/.work/split.npz`` (internal ids: training examples with their histories, the test users'
histories, targets and excluded items) and RecBole's atomic file
``benchmarks/.work/recbole/mlsplit/mlsplit.inter``, whose timestamps are each interaction's position in our
time-sorted table, so RecBole's time-ordered leave-one-out split ('LS' valid_and_test) holds out exactly the
interactions we hold out (``recbole_models.py`` asserts it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

WORK = Path(__file__).resolve().parents[1] / ".work"


def padded_histories(item: np.ndarray, user_start: np.ndarray, end: np.ndarray, length: int) -> np.ndarray:
    """``[R, length]`` item ids + 1 (0 = padding), the ``length`` interactions before ``end`` (right-aligned)."""
    idx = end[:, None] - length + np.arange(length)[None, :]
    valid = idx >= user_start[:, None]
    return np.where(valid, item[np.clip(idx, 0, None)] + 1, 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-history", type=int, default=50)
    args = ap.parse_args()

    from lightning_retrieval.data import RetrievalDataModule

    dm = RetrievalDataModule(split="leave_last_out", val_items=1, test_items=1, max_history=args.max_history)
    data = dm.data
    user_start = data.user_offsets[data.user]
    train = data.train_indices()
    test = dm.evaluation_set("test")
    test_start = data.user_offsets[test.users]
    WORK.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        WORK / "split.npz",
        num_users=data.num_users,
        num_items=data.num_items,
        max_history=args.max_history,
        train_user=data.user[train],
        train_item=data.item[train],
        train_history=padded_histories(data.item, user_start[train], train, args.max_history),
        test_users=test.users,
        test_history=padded_histories(data.item, test_start, test.cutoff, args.max_history),
        test_target_offsets=test.targets.offsets,
        test_target_values=test.targets.values,
        test_exclude_offsets=test.exclude.offsets,
        test_exclude_values=test.exclude.values,
        split=data.split,
        user=data.user,
        item=data.item,
    )
    inter = WORK / "recbole" / "mlsplit" / "mlsplit.inter"
    inter.parent.mkdir(parents=True, exist_ok=True)
    # timestamp = position in our table, which is sorted by (user, time, row): per user exactly our order
    rank = np.arange(len(data.user))
    with inter.open("w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u, i, t in zip(data.user.tolist(), data.item.tolist(), rank.tolist()):
            f.write(f"{u}\t{i}\t{t}\n")
    print(
        f"exported {len(train):,} training examples, {len(test.users):,} test users, {data.num_items:,} items -> {WORK}"
    )


if __name__ == "__main__":
    main()
