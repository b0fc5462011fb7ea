"""Evaluation throughput at several scales: our full evaluation protocol vs a bare torch matmul + top-k.

    python benchmarks/eval_throughput.py [--scales movielens,5000x20000,2000x1000000] [--repeats 7,5,3]

Per scale, every contender runs on the same user and item vectors, interleaved (one round = each contender
once), best of ``repeats`` rounds; the headline is the ratio to the bare matmul measured in the same rounds.
Seconds are this process's CPU time with one thread (``OMP_NUM_THREADS=1``, set here): on a machine shared
with other work, wall time would also count the wait for a core.

- bare: ``torch.topk(users @ items.T, 100)`` in user blocks (no seen-item exclusion, no metrics): the floor.
- bare with ``exact_torch``'s top-k (``retrieval/topk.py`` ``chunked_topk``, exact, faster than ``torch.topk`` on
  CPU): the floor for our index, so the protocol's own cost (exclusion, metrics) is the ratio to this row.
- ours, full protocol: index build + ``RetrievalEvaluator.evaluate`` with the default metrics (recall, NDCG,
  hit rate, MRR, coverage, topic diversity, distinct topics, embedding diversity) at 10/20/50/100, each user's
  seen items excluded; for ``exact_torch`` (seen items masked in the score matrix before the top-k) and ``exact``
  (FAISS ``IndexFlatIP``, which over-fetches ``100 + max(seen)`` and drops the seen items).
- ``exact_torch``, over-fetch: the same index forced onto the over-fetch path (the previous evaluation path).
- ``exact_torch``, accuracy + coverage: the full protocol without the beyond-accuracy list metrics (topic
  diversity, distinct topics, embedding diversity), to show what those cost.

Below the table, the metric computations alone (on the ``exact_torch`` lists, all four cut-offs, best of the
rounds): where the time between the bare top-k and the full protocol goes. The per-corpus topic-set table of the
topic metrics (``metrics/library.py`` ``TopicSets``) is built in the warm-up round and reused, as every later
evaluation on the same topic table reuses it.

Like the tasks on CPU, the process keeps freed memory (``lightning_retrieval/allocator.py``, glibc mmap/trim
thresholds) unless ``--default-malloc`` is given.

Scales: ``movielens`` = the embedded MovieLens test users x items (610 x 9,742) with their real seen items
(up to 2,697 per user) and genres, random 64-d vectors; ``UxN`` = random data, 20 seen items and 5 targets per
user, 200 topics (1-3 per item).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from lightning_retrieval.allocator import keep_freed_memory
from lightning_retrieval.data.preparation import CSR
from lightning_retrieval.metrics.base import RankedLists
from lightning_retrieval.retrieval import ExactIndex, RetrievalEvaluator, TorchExactIndex
from lightning_retrieval.retrieval.topk import chunked_topk

from _common import RESULTS, one_thread, write_result

DEPTH = 100
KS = [10, 20, 50, 100]


def recbole_seconds() -> dict[str, float]:
    """RecBole's full-sort seconds per scale from the peer comparison's result file (``make bench`` runs it
    first); empty where it has not been run."""
    path = RESULTS / "peer_comparison.json"
    if not path.exists():
        return {}
    rows = json.loads(path.read_text()).get("eval_throughput", [])
    scale = {(610, 9742): "movielens", (2000, 1_000_000): "2000x1000000"}
    return {scale[r["users"], r["items"]]: r["recbole_full_sort_s"] for r in rows if (r["users"], r["items"]) in scale}


def random_csr(rng, rows: int, per_row: int, num_values: int, low: int | None = None) -> CSR:
    """Rows of ``per_row`` distinct-ish random values (``low``..``per_row`` of them when ``low`` is set)."""
    counts = np.full(rows, per_row) if low is None else rng.integers(low, per_row + 1, size=rows)
    row_ids = np.repeat(np.arange(rows), counts)
    return CSR.from_pairs_unique(row_ids, rng.integers(0, num_values, size=row_ids.size), rows, num_values)


def make_scale(name: str, rng, dim: int) -> dict:
    if name == "movielens":
        from lightning_retrieval.data import RetrievalDataModule

        dm = RetrievalDataModule(split="leave_last_out", val_items=1, test_items=1, max_history=50)
        ev = dm.evaluation_set("test")
        topics = dm.item_topics()
        n_users, n_items = len(ev.users), topics.num_rows
        exclude, targets = ev.exclude, ev.targets
    else:
        n_users, n_items = (int(x) for x in name.split("x"))
        exclude = random_csr(rng, n_users, 20, n_items)
        targets = random_csr(rng, n_users, 5, n_items)
        topics = random_csr(rng, n_items, 3, 200, low=1)
    return {
        "users": rng.normal(size=(n_users, dim)).astype(np.float32),
        "items": rng.normal(size=(n_items, dim)).astype(np.float32),
        "exclude": exclude,
        "targets": targets,
        "topics": topics,
    }


def bare_topk(users: np.ndarray, items: np.ndarray, k: int, block: int, topk=torch.topk) -> np.ndarray:
    u, v = torch.from_numpy(users), torch.from_numpy(items)
    out = torch.empty(len(users), k, dtype=torch.long)
    with torch.no_grad():
        for s in range(0, len(u), block):
            out[s : s + block] = topk(u[s : s + block] @ v.T, k, dim=1).indices
    return out.numpy()


FULL_TORCH = "ours, exact_torch, full protocol"
CHUNKED_BARE = "bare matmul + chunked top-100 (exact_torch's top-k)"
ACCURACY_METRICS = ["recall", "ndcg", "hit_rate", "mrr", "coverage"]


def contenders(data: dict, evaluator: RetrievalEvaluator) -> dict:
    users, items = data["users"], data["items"]
    block = max(1, TorchExactIndex().block_scores // len(items))  # the same score-block size as exact_torch
    accuracy_only = RetrievalEvaluator(ks=evaluator.ks, metrics=ACCURACY_METRICS)

    def full(make_index, overfetch: bool = False, protocol: RetrievalEvaluator = evaluator):
        def run():
            index = make_index()
            if overfetch:
                index.supports_exclusion = False  # the previous path: fetch 100 + max(seen), drop the seen
            index.build(items)
            return protocol.evaluate(index, users, data["targets"], data["exclude"], data["topics"], items)

        return run

    return {
        "bare matmul + top-100": lambda: bare_topk(users, items, DEPTH, block),
        CHUNKED_BARE: lambda: bare_topk(
            users, items, DEPTH, block, topk=lambda scores, k, dim: chunked_topk(scores, k)
        ),
        FULL_TORCH: full(TorchExactIndex),
        "ours, exact (FAISS), full protocol": full(ExactIndex),
        "ours, exact_torch over-fetch (previous path), full protocol": full(TorchExactIndex, overfetch=True),
        "ours, exact_torch, accuracy metrics + coverage only": full(TorchExactIndex, protocol=accuracy_only),
    }


METRIC_GROUPS = {
    "accuracy metrics + coverage": ACCURACY_METRICS,
    "topic diversity + distinct topics": ["topic_diversity", "distinct_topics"],
    "embedding diversity": ["embedding_diversity"],
}


def metric_runs(data: dict, evaluator: RetrievalEvaluator) -> dict:
    """Each metric group computed at every cut-off on fresh ``exact_torch`` lists (list caches not shared)."""
    index = TorchExactIndex().build(data["items"])
    items, _, valid = evaluator.retrieve(index, data["users"], data["exclude"], DEPTH)
    hits = np.zeros(items.shape, dtype=bool)  # metric cost does not depend on where the hits are
    topics, by_name = data["topics"], {m.name: m for m in evaluator.metrics}

    def run(names):
        def compute():
            lists = RankedLists(
                items=items,
                hits=hits,
                num_targets=data["targets"].lengths,
                valid=valid,
                num_items=len(data["items"]),
                item_topic_offsets=topics.offsets,
                item_topic_values=topics.values,
                item_embeddings=data["items"],
            )
            for name in names:
                for k in evaluator.ks:
                    by_name[name].compute(lists, k)

        return compute

    return {group: run(names) for group, names in METRIC_GROUPS.items()}


def measure(runs: dict, repeats: int) -> dict[str, float]:
    best = {name: float("inf") for name in runs}
    for run in runs.values():  # warm-up round (allocator, thread pools, lazy imports)
        run()
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.process_time()
            run()
            best[name] = min(best[name], time.process_time() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scales", default="movielens,5000x20000,2000x1000000")
    ap.add_argument("--repeats", default="7,5,3", help="rounds per scale (best of), comma-separated")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--note", default="", help="free text recorded with the results (e.g. machine load)")
    ap.add_argument("--default-malloc", action="store_true", help="leave glibc's mmap/trim thresholds as they are")
    args = ap.parse_args()
    one_thread()
    kept = False if args.default_malloc else keep_freed_memory()
    scales, repeats = args.scales.split(","), [int(r) for r in args.repeats.split(",")]
    repeats += [repeats[-1]] * (len(scales) - len(repeats))
    evaluator = RetrievalEvaluator(ks=KS)
    recbole = recbole_seconds()
    results, md_rows = {}, []
    for scale, reps in zip(scales, repeats):
        rng = np.random.default_rng(0)
        data = make_scale(scale, rng, args.dim)
        n_users, n_items = len(data["users"]), len(data["items"])
        runs = contenders(data, evaluator)
        seconds = measure(runs, reps)
        bare = seconds["bare matmul + top-100"]
        metric_seconds = measure(metric_runs(data, evaluator), reps)
        # without exclusion the torch index returns the bare top-100 (up to float ties)
        no_seen = CSR(np.zeros(min(n_users, 200) + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))
        ours = RetrievalEvaluator(ks=[DEPTH], metrics=[]).retrieve(
            TorchExactIndex().build(data["items"]), data["users"][:200], no_seen, DEPTH
        )[0]
        ref = bare_topk(data["users"][:200], data["items"], DEPTH, 256)
        agreement = float(np.mean([len(set(a) & set(b)) / DEPTH for a, b in zip(ours, ref)]))
        results[scale] = {
            "users": n_users,
            "items": n_items,
            "max_seen": int(data["exclude"].lengths.max()),
            "repeats": reps,
            "seconds": seconds,
            "ratio_to_bare": {k: v / bare for k, v in seconds.items()},
            "metric_seconds": metric_seconds,
            "recbole_full_sort_s": recbole.get(scale),
            "top100_agreement_with_bare": agreement,
        }
        for name, s in seconds.items():
            md_rows.append(
                f"| {n_users:,} x {n_items:,} | {name} | {s:.3f} | **{s / bare:.2f}x** | "
                + (f"{recbole[scale]:.2f}" if scale in recbole and "torch, full" in name else "")
                + " |"
            )
        print("\n".join(md_rows[-len(seconds) :]), flush=True)
        print(metric_seconds, flush=True)
    md = [
        "# Evaluation throughput: full protocol vs bare matmul + top-k",
        "",
        f"Command: `python benchmarks/eval_throughput.py --scales {args.scales} --repeats {args.repeats}`. "
        "Every contender on the same vectors, interleaved rounds, best of the rounds; 64-d, top-100; seconds of "
        "process CPU time, one thread; freed memory kept in the process as the tasks do on CPU: "
        f"{'yes' if kept else 'no'}.",
        "",
        "| users x items | contender | seconds | / bare | RecBole full sort (s) |",
        "|---|---|---|---|---|",
        *md_rows,
        "",
        "Full protocol = index build + seen-item exclusion + recall/NDCG/hit rate/MRR/coverage/topic diversity/"
        "distinct topics/embedding diversity at 10/20/50/100. RecBole's seconds are read from the peer comparison's "
        "result file (`peer_comparison.md`; `make bench` runs it just before): its full sort on BPR vectors, "
        "recall/NDCG/hit at 20 and 50 only, timed once on the wall clock. "
        "The topic metrics' per-corpus topic-set table (built once per topic table where it pays: at most 256 "
        "topics and 2,048 distinct item topic sets, items often sharing a topic; MovieLens: 951 sets; the random "
        "200-topic corpora take the per-list path) is built in the warm-up round, as in training it is built at "
        "the first validation.",
    ]
    md += [
        "",
        "Metric computations alone (exact_torch lists, cut-offs 10/20/50/100, best of rounds): seconds (% of bare).",
        "",
        "| users x items | " + " | ".join(METRIC_GROUPS) + " |",
        "|---|" + "---|" * len(METRIC_GROUPS),
        *(
            f"| {r['users']:,} x {r['items']:,} | "
            + " | ".join(
                f"{r['metric_seconds'][g]:.4f} ({r['metric_seconds'][g] / r['seconds']['bare matmul + top-100']:.0%})"
                for g in METRIC_GROUPS
            )
            + " |"
            for r in results.values()
        ),
    ]
    md += [
        "",
        "`exact_torch` takes its top-k on CPU from `chunked_topk` (exact: the candidates of the k best of N/8 "
        "chunks), not `torch.topk`; part of its lead over the bare row is that top-k. The full protocol over the "
        "bare matmul with the same top-k (what exclusion and metrics cost): "
        + "; ".join(
            f"{r['users']:,} x {r['items']:,} {r['seconds'][FULL_TORCH] / r['seconds'][CHUNKED_BARE]:.2f}x"
            for r in results.values()
        )
        + ".",
    ]
    md += [
        f"\n{scale}: top-100 agreement of `exact_torch` with the bare top-k (200 users, no exclusion) = "
        f"{r['top100_agreement_with_bare']:.4f}; most seen items of one user = {r['max_seen']:,}."
        for scale, r in results.items()
    ]
    if args.note:
        md += ["", f"Note: {args.note}"]
    out = write_result("eval_throughput", {"args": vars(args), "scales": results}, "\n".join(md))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
