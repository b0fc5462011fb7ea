"""Data preparation time on a generated interactions file (default 10M rows).

    python benchmarks/prepare_throughput.py [--rows 10000000] [--users 200000] [--items 500000]

Writes a Parquet file with Zipf-distributed items and random timestamps, then times reading it,
``prepare`` (validation, id remapping, sorting, split) and building the validation/test evaluation sets.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lightning_retrieval.data import InteractionsFileSource
from lightning_retrieval.data.preparation import evaluation_set, prepare

from _common import write_result


def generate(path: Path, rows: int, users: int, items: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    user = np.concatenate([np.arange(users), rng.integers(0, users, rows - users)])  # every user appears
    item = (rng.zipf(1.2, rows) - 1) % items
    ts = rng.integers(1_500_000_000, 1_700_000_000, rows)
    pd.DataFrame({"user_id": user, "item_id": item, "timestamp": ts}).to_parquet(path, index=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--items", type=int, default=500_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "interactions.parquet"
        t0 = time.perf_counter()
        generate(path, args.rows, args.users, args.items)
        t_gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        raw = InteractionsFileSource(str(path)).load()
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        data = prepare(raw, split="leave_last_out")
        t_prep = time.perf_counter() - t0
        t0 = time.perf_counter()
        val, test = evaluation_set(data, "val"), evaluation_set(data, "test")
        t_eval = time.perf_counter() - t0
    rows = [
        ("generate file (not part of preparation)", t_gen),
        ("read Parquet", t_read),
        ("prepare: validate + remap + sort + split", t_prep),
        ("evaluation sets (val + test)", t_eval),
    ]
    md = [
        f"# Data preparation: {args.rows:,} interactions, {data.num_users:,} users, {data.num_items:,} items",
        "",
        "Command: `python benchmarks/prepare_throughput.py "
        + f"--rows {args.rows} --users {args.users} --items {args.items}`",
        "",
        "| step | seconds |",
        "|---|---|",
    ] + [f"| {name} | {sec:.2f} |" for name, sec in rows]
    md.append(f"| **total preparation (read + prepare + evaluation sets)** | **{t_read + t_prep + t_eval:.2f}** |")
    md.append(f"\nEvaluated users: validation {len(val):,}, test {len(test):,}.")
    out = write_result(
        "prepare_throughput",
        {"rows": args.rows, "seconds": dict(rows), "total_preparation_seconds": t_read + t_prep + t_eval},
        "\n".join(md),
    )
    print("\n".join(md))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
