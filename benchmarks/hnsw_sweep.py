"""HNSW speed/recall curve: sweep the graph (M, efConstruction, vector storage) and efSearch on clustered vectors.

    python benchmarks/hnsw_sweep.py [--items 1000000] [--queries 5000] [--builds 32:80 12:200 HNSW16,SQ8@200]
        [--ef 100,128,160] [--k-factors 1,2] [--append]

Same data as ``index_comparison.py`` (a mixture of Gaussian clusters, L2-normalised). Every ``--builds`` entry is
one index: ``M:efConstruction`` is the ``hnsw`` backend (``IndexHNSWFlat``), anything else a FAISS factory string
through the ``faiss_factory`` backend, ``FACTORY[@efConstruction][/C]``: e.g. ``HNSW16,SQ8@200`` (8-bit
scalar-quantised vectors in the graph; without ``@``: FAISS's default efConstruction 40), ``/C`` adds the vectors
grouped by C k-means clusters (``locality_clusters``: a query's graph walk stays in nearby memory). Each is
searched at every efSearch (``max(efSearch, k * k_factor)``), refine factories (``...,RFlat``: exact re-rank of
``k * k_factor`` graph candidates) also at every ``--k-factors`` entry. The result files are rewritten after every
build, so a sweep cut short keeps the builds it finished; ``--append`` keeps the rows of the previous result file
(same data arguments) and adds this run's; ``--name`` picks the result file (``make bench`` writes ``hnsw_target``:
the plain graph and the target setting, measured in that run). Queries/s are relative to the exact FAISS index
(``IndexFlatIP``) searched in the same run, interleaved with the HNSW searches, best of ``--repeats``; recall@k is
the share of the exact top-k returned. Seconds are this process's CPU time (searches on one thread:
``OMP_NUM_THREADS=1``, set here; builds on ``--build-threads``, their CPU seconds summed), so other work on a shared
machine does not count.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import time

import faiss
import numpy as np
from index_comparison import clustered

from lightning_retrieval.retrieval.index import ExactIndex, FaissFactoryIndex, HNSWIndex, refine_index

from _common import RESULTS, one_thread, write_result


def timed_search(index, queries: np.ndarray, k: int, repeats: int) -> tuple[float, np.ndarray]:
    best, ids = float("inf"), None
    for _ in range(repeats):
        start = time.process_time()
        _, ids = index.search(queries, k)
        best = min(best, time.process_time() - start)
    return best, ids


def make_index(build: str):
    """``"32:200"`` -> the ``hnsw`` backend (M, efConstruction); ``"HNSW16,SQ8@200"`` -> ``faiss_factory``
    (factory string, efConstruction; without ``@``: FAISS's 40)."""
    pair = re.fullmatch(r"(\d+):(\d+)", build)
    if pair:
        return HNSWIndex(m=int(pair[1]), ef_construction=int(pair[2]))
    factory = re.fullmatch(r"([^@/]*HNSW[^@/]*)(?:@(\d+))?(?:/(\d+))?", build)
    if not factory:
        raise SystemExit(
            f"--builds: expected M:efConstruction (e.g. 32:200) or an HNSW factory string with an optional "
            f"@efConstruction and /locality_clusters (e.g. HNSW16,SQ8@200/1024), got {build!r}"
        )
    ef_construction, clusters = (int(x) if x else None for x in (factory[2], factory[3]))
    return FaissFactoryIndex(factory=factory[1], ef_construction=ef_construction, locality_clusters=clusters)


def describe(index) -> str:
    if isinstance(index, HNSWIndex):
        return f"hnsw M={index.m}, efConstruction={index.ef_construction}"
    locality = f", locality_clusters {index.locality_clusters}" if index.locality_clusters else ""
    return f"faiss_factory `{index.factory}` (efConstruction {index.ef_construction or 40}{locality})"


def is_refine(index) -> bool:
    return isinstance(index, FaissFactoryIndex) and refine_index(index.index) is not None


def report(args, rows: list[dict], exact_qps: float, done: int, planned: int) -> None:
    """Write the curve measured so far; each row's ratio is against the exact search of its own run."""
    for r in rows:
        if r["run"] == "this":
            r["exact_queries_per_second"] = exact_qps
        r["speedup_vs_exact"] = r["queries_per_second"] / r["exact_queries_per_second"]
    good = [r for r in rows if r[f"recall@{args.k}"] >= 0.95 and r["speedup_vs_exact"] >= 10]
    best = max(good, key=lambda r: r["speedup_vs_exact"]) if good else None
    runs = sorted({r["command"] for r in rows}, key=lambda c: c != args.command)
    lines = [
        f"# HNSW sweep: {args.items:,} x {args.dim}-d clustered vectors, {args.queries:,} queries, k={args.k}",
        "",
        *[f"Command: `{c}`." for c in runs],
        f"Exact (FAISS `IndexFlatIP`) in this run: {exact_qps:,.0f} queries/s, best of the runs interleaved with "
        "the HNSW searches; each row's ratio is against the exact search of its own run. One thread, seconds "
        "of process CPU time.",
        "",
        f"| index | efSearch | k_factor | build CPU s | queries/s | / exact | recall@{args.k} |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['index']} | {r['ef_search']} | {r.get('k_factor') or '-'} | {r['build_seconds']:.0f} | "
            f"{r['queries_per_second']:,.0f} | {r['speedup_vs_exact']:.1f}x | {r[f'recall@{args.k}']:.3f} |"
        )
    lines += [
        "",
        (
            f"**Best setting with recall@{args.k} >= 0.95 and >= 10x exact: {best['index']}, "
            f"efSearch={best['ef_search']}"
            + (f", k_factor={best['k_factor']}" if best.get("k_factor") else "")
            + f" ({best['speedup_vs_exact']:.1f}x, recall {best[f'recall@{args.k}']:.3f}).**"
            if best
            else f"**No setting reached both recall@{args.k} >= 0.95 and 10x exact queries/s.**"
        ),
        "",
        f"Builds measured in this run: {done} of {planned}. 1-min load average at the end: "
        f"{os.getloadavg()[0]:.1f} ({os.cpu_count()} cores shared).",
    ]
    if args.note:
        lines.append(f"Note: {args.note}")
    stored = [{**r, "run": "earlier"} for r in rows]
    payload = {"args": vars(args), "exact_queries_per_second": exact_qps, "rows": stored, "best": best}
    md = write_result(args.name, payload, "\n".join(lines))
    print("\n".join(lines))
    print(f"written: {md}", flush=True)


def earlier_rows(args) -> list[dict]:
    """Rows of the previous result file, when it measured the same data (``--append``)."""
    path = RESULTS / f"{args.name}.json"
    if not path.exists():
        return []
    previous = json.loads(path.read_text())
    same = ("items", "dim", "queries", "k", "clusters")
    if any(previous["args"].get(key) != getattr(args, key) for key in same):
        raise SystemExit(f"--append: {path} measured other data ({', '.join(same)} differ); run without --append")
    return [{**r, "run": "earlier"} for r in previous["rows"]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=5_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument(
        "--builds",
        nargs="+",
        default=["12:200", "HNSW12,SQfp16@200", "HNSW12,SQfp16@200/1024"],  # the plain graph, then the target's setting
        help="M:efConstruction pairs (hnsw backend) or FAISS factory strings such as HNSW16,SQ8",
    )
    ap.add_argument("--ef", default="100,128,160")
    ap.add_argument("--k-factors", default="1,2", help="k_factor values searched on refine factories (...,RFlat)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--build-threads", type=int, default=1, help="FAISS threads while building (searches: one)")
    ap.add_argument("--append", action="store_true", help="keep the previous result file's rows")
    ap.add_argument("--note", default="")
    ap.add_argument(
        "--name",
        default="hnsw_sweep",
        help="result file name under results/ (make bench writes hnsw_target: the committed curve stays)",
    )
    args = ap.parse_args()
    args.command = (
        f"python benchmarks/hnsw_sweep.py --items {args.items} --queries {args.queries} --builds "
        f"{' '.join(args.builds)} --ef {args.ef}"
        + (f" --k-factors {args.k_factors}" if any("RFlat" in b or "Refine" in b for b in args.builds) else "")
        + (f" --build-threads {args.build_threads}" if args.build_threads != 1 else "")
        + (" --append" if args.append else "")
        + (f" --name {args.name}" if args.name != "hnsw_sweep" else "")
    )
    indexes = [(build, make_index(build)) for build in args.builds]
    rows = earlier_rows(args) if args.append else []
    one_thread()

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((args.clusters, args.dim)).astype(np.float32) / np.sqrt(args.dim)
    items = clustered(rng, args.items, centers, 0.5 / np.sqrt(args.dim))
    queries = clustered(rng, args.queries, centers, 0.5 / np.sqrt(args.dim))
    exact = ExactIndex().build(items)
    exact_seconds, truth = timed_search(exact, queries, args.k, args.repeats)
    for done, (build, index) in enumerate(indexes, start=1):
        faiss.omp_set_num_threads(args.build_threads)
        start = time.process_time()
        index.build(items)
        build_seconds = time.process_time() - start  # CPU seconds of all build threads
        faiss.omp_set_num_threads(1)
        k_factors = [float(x) for x in args.k_factors.split(",")] if is_refine(index) else [None]
        for k_factor, ef in itertools.product(k_factors, (int(x) for x in args.ef.split(","))):
            index.ef_search = ef
            if k_factor is not None:
                index.k_factor = k_factor
            seconds, ids = timed_search(index, queries, args.k, args.repeats)
            again, _ = timed_search(exact, queries, args.k, 1)  # the exact side, measured alongside
            exact_seconds = min(exact_seconds, again)
            found = (np.sort(ids, axis=1)[:, :, None] == truth[:, None, :]).any(axis=1)
            rows.append(
                {
                    "index": describe(index),
                    "build": build,
                    "ef_search": max(ef, int(args.k * (k_factor or 1))),
                    "k_factor": k_factor,
                    "build_seconds": build_seconds,
                    "queries_per_second": args.queries / seconds,
                    f"recall@{args.k}": float(found.mean()),
                    "run": "this",
                    "command": args.command,
                }
            )
            print(rows[-1], flush=True)
        del index
        report(args, rows, args.queries / exact_seconds, done, len(indexes))


if __name__ == "__main__":
    main()
