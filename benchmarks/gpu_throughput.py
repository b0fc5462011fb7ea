"""GPU throughput: two-tower training examples/s and evaluation users/s on the device this runs on.

    python benchmarks/gpu_throughput.py [--config configs/two_tower_logq_8192.yaml] [--batch-size 8192] [--batches 20]

Runs on a GPU when torch sees one, otherwise on the CPU with smaller defaults, and says which in the result.
Training: the config's model and data (``--data.batch_size`` overridden), ``--batches`` batches after a warm-up;
examples/s end to end (input pipeline included, what an epoch costs) and per optimiser step alone (the device's
share; the gap is the host waiting on input). Evaluation: ``RetrievalEvaluator`` with the ``exact_torch`` index
(on the device) over random vectors, 20 seen items and 5 targets per user, top-100, accuracy metrics + coverage.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from _training import build_from_config, time_training
from eval_throughput import random_csr

from lightning_retrieval.data.preparation import take_rows
from lightning_retrieval.retrieval import RetrievalEvaluator, TorchExactIndex

from _common import write_result

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs" / "two_tower_logq_8192.yaml"))
    ap.add_argument("--batch-size", type=int, default=8192 if gpu else 512)
    ap.add_argument("--batches", type=int, default=20 if gpu else 8)
    ap.add_argument("--users", type=int, default=100_000 if gpu else 5_000)
    ap.add_argument("--items", type=int, default=1_000_000 if gpu else 100_000)
    ap.add_argument("--dim", type=int, default=64)
    args = ap.parse_args()
    device = torch.cuda.get_device_name(0) if gpu else "CPU (torch sees no GPU)"

    model, data = build_from_config(args.config, [f"--data.batch_size={args.batch_size}"])
    timing = time_training(model, data, args.batches, accelerator="gpu" if gpu else "cpu")
    train = {
        **timing,
        "examples_per_second_end_to_end": args.batch_size / timing["batch_seconds_median"],
        "examples_per_second_step_only": args.batch_size / timing["step_seconds_median"],
    }

    rng = np.random.default_rng(0)
    items = rng.normal(size=(args.items, args.dim)).astype(np.float32)
    users = rng.normal(size=(args.users, args.dim)).astype(np.float32)
    exclude, targets = random_csr(rng, args.users, 20, args.items), random_csr(rng, args.users, 5, args.items)
    evaluator = RetrievalEvaluator(ks=[10, 20, 50, 100], metrics=["recall", "ndcg", "hit_rate", "mrr", "coverage"])
    index = TorchExactIndex().build(items)
    warm = np.arange(min(1000, args.users))
    evaluator.evaluate(index, users[warm], take_rows(targets, warm), take_rows(exclude, warm))  # warm-up
    start = time.perf_counter()
    evaluator.evaluate(TorchExactIndex().build(items), users, targets, exclude)
    seconds = time.perf_counter() - start
    evaluation = {
        "users": args.users,
        "items": args.items,
        "seconds": seconds,
        "users_per_second": args.users / seconds,
    }

    md = "\n".join(
        [
            f"# Throughput on {device}",
            "",
            f"Command: `python benchmarks/gpu_throughput.py --batch-size {args.batch_size} --batches {args.batches} "
            f"--users {args.users} --items {args.items}` (config `{os.path.relpath(args.config, ROOT)}`).",
            "",
            "| measure | value |",
            "|---|---|",
            f"| training examples/s, end to end (batch {args.batch_size}) | "
            f"{train['examples_per_second_end_to_end']:,.0f} |",
            f"| training examples/s, optimiser step only | {train['examples_per_second_step_only']:,.0f} |",
            f"| evaluation users/s, {args.users:,} users x {args.items:,} items, top-100, exclusion + metrics | "
            f"{evaluation['users_per_second']:,.0f} |",
            "",
            f"1-min load average: {os.getloadavg()[0]:.1f}."
            + ("" if gpu else " No GPU was visible: these are CPU numbers, not the GPU benchmark."),
        ]
    )
    payload = {"device": device, "train": train, "evaluation": evaluation}
    out = write_result("gpu_throughput" if gpu else "gpu_throughput_cpu", payload, md)
    print(md, f"\nwritten: {out}", sep="\n")


if __name__ == "__main__":
    main()
