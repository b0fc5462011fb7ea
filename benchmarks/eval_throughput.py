"""Evaluation throughput: our evaluator (exact FAISS and exact torch backends) vs a bare torch matmul + top-k.

    python benchmarks/eval_throughput.py [--items 1000000] [--users 100000] [--dim 64] [--k 100]

Both sides get the same random item and user vectors. "bare" = ``torch.topk(users @ items.T, k)`` in user
batches (no seen-item exclusion, no metrics). "ours, search" = the exact FAISS inner-product index plus the
vectorised seen-item exclusion; "ours, full" = search + all accuracy metrics (recall/NDCG/hit rate/MRR at
10/20/50/100) + coverage. Each user has ``--seen`` excluded items and ``--targets`` targets.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lightning_retrieval.data.preparation import CSR
from lightning_retrieval.registry import resolve
from lightning_retrieval.retrieval import RetrievalEvaluator

from _common import write_result


def random_csr(rng, rows: int, per_row: int, num_values: int) -> CSR:
    values = rng.integers(0, num_values, size=(rows, per_row))
    return CSR.from_pairs_unique(np.repeat(np.arange(rows), per_row), values.reshape(-1), rows, num_values)


def bare_topk(users: torch.Tensor, items: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    out = torch.empty(len(users), k, dtype=torch.long)
    for s in range(0, len(users), batch):
        out[s : s + batch] = torch.topk(users[s : s + batch] @ items.T, k, dim=1).indices
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--seen", type=int, default=20)
    ap.add_argument("--targets", type=int, default=5)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--indexes", default="exact,exact_torch", help="registry names of exact index backends to time")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    items = rng.normal(size=(args.items, args.dim)).astype(np.float32)
    users = rng.normal(size=(args.users, args.dim)).astype(np.float32)
    exclude = random_csr(rng, args.users, args.seen, args.items)
    targets = random_csr(rng, args.users, args.targets, args.items)

    t0 = time.perf_counter()
    bare = bare_topk(torch.from_numpy(users), torch.from_numpy(items), args.k, args.batch)
    t_bare = time.perf_counter() - t0

    evaluator = RetrievalEvaluator(
        ks=sorted({10, 20, 50, args.k}),
        metrics=["recall", "ndcg", "hit_rate", "mrr", "coverage"],
        batch_size=args.batch,
    )
    no_exclusion = CSR(np.zeros(201, dtype=np.int64), np.zeros(0, dtype=np.int64))
    rows = [("bare torch matmul + topk", t_bare)]
    ratios, agreement = {}, {}
    for name in args.indexes.split(","):
        index = resolve("index", name)()
        t0 = time.perf_counter()
        index.build(items)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        evaluator.retrieve(index, users, exclude, args.k)
        t_search = time.perf_counter() - t0
        t0 = time.perf_counter()
        evaluator.evaluate(index, users, targets, exclude)
        t_full = time.perf_counter() - t0
        rows += [
            (f"ours `{name}`: index build", t_build),
            (f"ours `{name}`: search + seen-item exclusion", t_search),
            (f"ours `{name}`: search + exclusion + metrics", t_full),
        ]
        ratios[name] = {"search_vs_bare": t_search / t_bare, "full_vs_bare": (t_build + t_full) / t_bare}
        # without exclusions both sides must return the same lists (up to float ties)
        found = evaluator.retrieve(index, users[:200], no_exclusion, args.k)[0]
        agreement[name] = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(found, bare[:200].numpy())]))
    md = [
        f"# Evaluation throughput: {args.users:,} users x {args.items:,} items x {args.dim}-d, k={args.k}",
        "",
        "Command: `python benchmarks/eval_throughput.py "
        f"--items {args.items} --users {args.users} --dim {args.dim} --k {args.k}`",
        "",
        "| step | seconds | users/s |",
        "|---|---|---|",
    ]
    md += [
        f"| {n} | {s:.2f} | {args.users / s:,.0f} |" if "build" not in n else f"| {n} | {s:.2f} | - |" for n, s in rows
    ]
    for name, r in ratios.items():
        md.append(
            f"\n**`{name}`: search + exclusion / bare = {r['search_vs_bare']:.2f}x; full evaluation incl. build and "
            f"metrics / bare = {r['full_vs_bare']:.2f}x; top-{args.k} agreement with bare torch (200 users, no "
            f"exclusion) = {agreement[name]:.4f}.**"
        )
    out = write_result(
        "eval_throughput",
        {
            "args": vars(args),
            "seconds": dict(rows),
            "ratios": ratios,
            "agreement": agreement,
        },
        "\n".join(md),
    )
    print("\n".join(md))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
