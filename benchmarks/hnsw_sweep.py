"""HNSW speed/recall curve: sweep M (build) and efSearch (search) on the clustered benchmark vectors.

    python benchmarks/hnsw_sweep.py [--items 1000000] [--queries 5000] [--m 16,32] [--ef 100,128,160,256]

Same data as ``index_comparison.py`` (a mixture of Gaussian clusters, L2-normalised). For every M one index is
built (efConstruction ``--ef-construction``), then searched at every efSearch (``max(efSearch, k)``). Queries/s
are relative to the exact FAISS index (``IndexFlatIP``) searched in the same run, interleaved with the HNSW
searches, best of ``--repeats``; recall@k is the share of the exact top-k returned. Seconds are this process's
CPU time (one thread: ``OMP_NUM_THREADS=1``, set here), so other work on a shared machine does not count.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from index_comparison import clustered

from lightning_retrieval.retrieval.index import ExactIndex, HNSWIndex

from _common import one_thread, write_result


def timed_search(index, queries: np.ndarray, k: int, repeats: int) -> tuple[float, np.ndarray]:
    best, ids = float("inf"), None
    for _ in range(repeats):
        start = time.process_time()
        _, ids = index.search(queries, k)
        best = min(best, time.process_time() - start)
    return best, ids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=5_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--m", default="16,32")
    ap.add_argument("--ef", default="100,128,160,256")
    ap.add_argument("--ef-construction", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    one_thread()

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((args.clusters, args.dim)).astype(np.float32) / np.sqrt(args.dim)
    items = clustered(rng, args.items, centers, 0.5 / np.sqrt(args.dim))
    queries = clustered(rng, args.queries, centers, 0.5 / np.sqrt(args.dim))
    exact = ExactIndex().build(items)
    exact_seconds, truth = timed_search(exact, queries, args.k, args.repeats)
    rows = []
    for m in (int(x) for x in args.m.split(",")):
        index = HNSWIndex(m=m, ef_construction=args.ef_construction)
        start = time.process_time()
        index.build(items)
        build = time.process_time() - start
        for ef in (int(x) for x in args.ef.split(",")):
            index.ef_search = ef
            seconds, ids = timed_search(index, queries, args.k, args.repeats)
            again, _ = timed_search(exact, queries, args.k, 1)  # the exact side, measured alongside
            exact_seconds = min(exact_seconds, again)
            found = (np.sort(ids, axis=1)[:, :, None] == truth[:, None, :]).any(axis=1)
            rows.append(
                {
                    "m": m,
                    "ef_search": max(ef, args.k),
                    "ef_construction": args.ef_construction,
                    "build_seconds": build,
                    "queries_per_second": args.queries / seconds,
                    f"recall@{args.k}": float(found.mean()),
                }
            )
            print(rows[-1], flush=True)
    exact_qps = args.queries / exact_seconds
    for r in rows:
        r["speedup_vs_exact"] = r["queries_per_second"] / exact_qps
    good = [r for r in rows if r[f"recall@{args.k}"] >= 0.95 and r["speedup_vs_exact"] >= 10]
    best = max(good, key=lambda r: r["speedup_vs_exact"]) if good else None
    lines = [
        f"# HNSW sweep: {args.items:,} x {args.dim}-d clustered vectors, {args.queries:,} queries, k={args.k}",
        "",
        f"Command: `python benchmarks/hnsw_sweep.py --items {args.items} --queries {args.queries} --m {args.m} "
        f"--ef {args.ef}`. Exact (FAISS `IndexFlatIP`): {exact_qps:,.0f} queries/s, best of the runs interleaved "
        "with the HNSW searches; one thread, seconds of process CPU time.",
        "",
        f"| M | efSearch | build CPU s | queries/s | / exact | recall@{args.k} |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['m']} | {r['ef_search']} | {r['build_seconds']:.0f} | {r['queries_per_second']:,.0f} | "
            f"{r['speedup_vs_exact']:.1f}x | {r[f'recall@{args.k}']:.3f} |"
        )
    lines += [
        "",
        (
            f"**Best setting with recall@{args.k} >= 0.95 and >= 10x exact: M={best['m']}, "
            f"efSearch={best['ef_search']} ({best['speedup_vs_exact']:.1f}x, recall {best[f'recall@{args.k}']:.3f}).**"
            if best
            else f"**No setting reached both recall@{args.k} >= 0.95 and 10x exact queries/s.**"
        ),
        "",
        f"1-min load average at the end: {os.getloadavg()[0]:.1f} (2 cores shared).",
    ]
    if args.note:
        lines.append(f"Note: {args.note}")
    payload = {"args": vars(args), "exact_queries_per_second": exact_qps, "rows": rows, "best": best}
    md = write_result("hnsw_sweep", payload, "\n".join(lines))
    print("\n".join(lines))
    print(f"written: {md}")


if __name__ == "__main__":
    main()
