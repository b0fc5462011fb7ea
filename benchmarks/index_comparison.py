"""Index backends on generated vectors: exact vs HNSW vs IVF-PQ (build time, queries/s, recall@k, memory).

    python benchmarks/index_comparison.py [--items 1000000] [--dim 64] [--queries 10000] [--k 100]

Items and queries come from the same mixture of ``--clusters`` Gaussian clusters, L2-normalised (unstructured
i.i.d. Gaussians would be a worst case no real embedding table looks like). Recall@k of an approximate index is
the share of the exact top-k it returns. Memory is the size of the serialised FAISS index.
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from lightning_retrieval.registry import resolve

from _common import write_result


def clustered(rng, n: int, centers: np.ndarray, spread: float) -> np.ndarray:
    x = centers[rng.integers(0, len(centers), size=n)] + spread * rng.standard_normal((n, centers.shape[1]))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--hnsw", default="m=32,ef_construction=64,ef_search=128")
    ap.add_argument("--ivfpq", default="nlist=4096,pq_m=16,nbits=8,nprobe=32")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((args.clusters, args.dim)).astype(np.float32) / np.sqrt(args.dim)
    items = clustered(rng, args.items, centers, 0.5 / np.sqrt(args.dim))
    queries = clustered(rng, args.queries, centers, 0.5 / np.sqrt(args.dim))

    def params(text: str) -> dict:
        return {k: int(v) for k, v in (p.split("=") for p in text.split(","))} if text else {}

    rows, exact_ids = [], None
    for name, kwargs in (("exact", {}), ("hnsw", params(args.hnsw)), ("ivfpq", params(args.ivfpq))):
        index = resolve("index", name)(**kwargs)
        start = time.perf_counter()
        index.build(items)
        build = time.perf_counter() - start
        start = time.perf_counter()
        _, ids = index.search(queries, args.k)
        search = time.perf_counter() - start
        if exact_ids is None:
            exact_ids = ids
        hits = (np.sort(ids, axis=1)[:, :, None] == exact_ids[:, None, :]).any(axis=1)  # [Q, k] exact ids found
        memory = faiss.serialize_index(faiss.index_gpu_to_cpu(index.index) if index.on_gpu else index.index).nbytes
        rows.append(
            {
                "index": name,
                "params": kwargs,
                "build_seconds": build,
                "queries_per_second": args.queries / search,
                f"recall@{args.k}": float(hits.mean()),
                "memory_mb": memory / 2**20,
                "on_gpu": index.on_gpu,
            }
        )
        print(rows[-1], flush=True)

    exact = rows[0]
    lines = [
        f"# Index backends: {args.items:,} x {args.dim}-d clustered vectors, {args.queries:,} queries, k={args.k}",
        "",
        f"Command: `python benchmarks/index_comparison.py --items {args.items} --dim {args.dim} "
        f"--queries {args.queries} --k {args.k}`",
        "",
        f"| index | parameters | build s | queries/s | QPS / exact | recall@{args.k} vs exact | memory MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        lines.append(
            f"| {r['index']} | {p} | {r['build_seconds']:.1f} | {r['queries_per_second']:,.0f} | "
            f"{r['queries_per_second'] / exact['queries_per_second']:.1f}x | {r[f'recall@{args.k}']:.3f} | "
            f"{r['memory_mb']:.0f} |"
        )
    md = write_result("index_comparison", {"args": vars(args), "rows": rows}, "\n".join(lines))
    print("\n".join(lines))
    print(f"written: {md}")


if __name__ == "__main__":
    main()
