"""Pre-clustering training speed: seconds per epoch of ``configs/preclustering.yaml`` on the embedded data.

    python benchmarks/preclustering_speed.py [--batches 8] [--config configs/preclustering.yaml]

Builds the config's model and data, trains ``--batches`` batches (after one warm-up batch, no validation, no
logging or checkpoints) and extrapolates to the epoch: ``median seconds per batch (end to end, input pipeline
included) x batches per epoch``. Also times ``ward_labels`` alone: on history-shaped random inputs (full
histories of Gaussian points), from the points and given the ``[B, L, L]`` distance matrix that the module
computes anyway for the medoids; and on the histories the module got in the measured training batches (real
lengths, trained embeddings) given their distances, which is what Ward adds to a training batch; each with the
default implementation (the compiled kernel) and the batched torch loop, whose labels must agree. Seconds are this
process's CPU time (one thread with ``--threads 1``), so other work on a shared machine does not count; limited
batches: the epoch figure is an extrapolation, and the machine's load and matmul speed are recorded with it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from _training import build_from_config, time_training

from lightning_retrieval.models.interests.preclustering import (
    PreClusteringInterests,
    pairwise_squared_distances,
    ward_labels,
)

from _common import reference_gflops, write_result

ROOT = Path(__file__).resolve().parent.parent


def ward_labels_recompute(x: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """The previous implementation, kept as the reference: Ward distances of all pairs recomputed from the
    centroids at every merge step (cdist of [B, L, L, D] per step).

    Every step merges, for each user still above ``k`` clusters, the pair with the smallest Ward cost
    ``n_a n_b / (n_a + n_b) |mu_a - mu_b|^2``. Loop over merge steps (at most L - k), never over users.
    Returns cluster labels ``[B, L]`` (the index of the cluster's surviving slot; -1 for padding).
    """
    batch, length, _ = x.shape
    sums, counts = x * mask[:, :, None], mask.float()
    labels = torch.where(mask, torch.arange(length, device=x.device).expand(batch, -1), -1)
    active = mask.clone()
    eye = torch.eye(length, dtype=torch.bool, device=x.device)[None]
    rows = torch.arange(batch, device=x.device)
    for _ in range(max(length - k, 0)):
        need = active.sum(1) > k
        if not need.any():
            break
        mu = sums / counts.clamp(min=1)[:, :, None]
        dist = torch.cdist(mu, mu).pow(2)
        n_a, n_b = counts[:, :, None], counts[:, None, :]
        cost = n_a * n_b / (n_a + n_b).clamp(min=1) * dist
        pair_ok = active[:, :, None] & active[:, None, :] & ~eye
        cost = cost.masked_fill(~pair_ok, float("inf")).flatten(1)
        flat = cost.argmin(1)
        a, b = flat // length, flat % length
        a, b = torch.minimum(a, b), torch.maximum(a, b)
        upd = need  # users that merge this step
        sums[rows[upd], a[upd]] += sums[rows[upd], b[upd]]
        counts[rows[upd], a[upd]] += counts[rows[upd], b[upd]]
        counts[rows[upd], b[upd]] = 0
        active[rows[upd], b[upd]] = False
        moved = upd[:, None] & (labels == b[:, None])
        labels = torch.where(moved, a[:, None].expand(-1, length), labels)
    return labels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs" / "preclustering.yaml"))
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, data = build_from_config(args.config)
    interests = next((m for m in model.modules() if isinstance(m, PreClusteringInterests)), None)
    if interests is None:
        raise SystemExit(f"{args.config} has no preclustering interest module: this benchmark times its Ward step")
    seen = []  # (history [B, L, D], mask [B, L]) of each training batch, as the module got them
    hook = interests.register_forward_pre_hook(lambda _, inputs: seen.append((inputs[0].detach(), inputs[1])))
    timing = time_training(model, data, args.batches, clock=time.process_time)
    hook.remove()
    per_batch, batches_per_epoch = timing["batch_seconds_median"], timing["batches_per_epoch"]
    # Ward alone on history-shaped random inputs: [batch, max_history, width], full histories, ...
    batch, length, width, k = data.batch_size, data.max_history, interests.embedding_dim, interests.num_interests
    x = torch.randn(batch, length, width)
    mask = torch.ones(batch, length, dtype=torch.bool)
    distances = pairwise_squared_distances(x)
    # and on the histories of the measured training batches (after the warm-up), given their distances
    trained = [(h, m, pairwise_squared_distances(h)) for h, m in seen[1:]]
    runs = {
        "lance_williams": lambda: ward_labels(x, mask, k),
        "given_distances": lambda: ward_labels(x, mask, k, distances=distances),
        "torch_given_distances": lambda: ward_labels(x, mask, k, distances=distances, implementation="torch"),
        "recompute": lambda: ward_labels_recompute(x, mask, k),
    }
    for i, (h, m, d) in enumerate(trained):
        runs[f"training_batch_{i}"] = lambda h=h, m=m, d=d: ward_labels(h, m, k, distances=d)
        runs[f"torch_training_batch_{i}"] = lambda h=h, m=m, d=d: ward_labels(
            h, m, k, distances=d, implementation="torch"
        )
    ward_labels(x[:2], mask[:2], k)  # the compiled kernel loads (or compiles) once, outside the timings
    best = {name: float("inf") for name in runs}
    for _ in range(args.repeats):  # interleaved (all in every round), best of the rounds
        for name, run in runs.items():
            start = time.process_time()
            run()
            best[name] = min(best[name], time.process_time() - start)
    same = bool(torch.equal(ward_labels_recompute(x, mask, k), ward_labels(x, mask, k)))
    same_as_torch = all(
        torch.equal(ward_labels(h, m, k, distances=d), ward_labels(h, m, k, distances=d, implementation="torch"))
        for h, m, d in [(x, mask, distances), *trained]
    )
    trained_seconds, torch_trained_seconds = (
        statistics.median_high(best[f"{prefix}{i}"] for i in range(len(trained)))
        for prefix in ("training_batch_", "torch_training_batch_")
    )
    mean_length = float(torch.cat([m.sum(1) for _, m, _ in trained]).float().mean())
    gflops = reference_gflops()
    ward_seconds, merge_seconds = best["lance_williams"], best["given_distances"]
    load = os.getloadavg()[0]
    payload = {
        "config": os.path.relpath(args.config, ROOT),
        "measured_batches": args.batches,
        "seconds_per_batch_median": per_batch,
        "batches_per_epoch": batches_per_epoch,
        "epoch_seconds_extrapolated": per_batch * batches_per_epoch,
        "ward_seconds_per_batch_full_histories": ward_seconds,
        "ward_seconds_per_batch_given_distances": merge_seconds,
        "ward_epoch_seconds_in_training_extrapolated": merge_seconds * batches_per_epoch,
        "ward_seconds_per_training_batch_given_distances_median": trained_seconds,
        "ward_epoch_seconds_training_batches_extrapolated": trained_seconds * batches_per_epoch,
        "torch_loop_ward_seconds_per_batch_given_distances": best["torch_given_distances"],
        "torch_loop_ward_seconds_per_training_batch_median": torch_trained_seconds,
        "torch_loop_ward_epoch_seconds_training_batches_extrapolated": torch_trained_seconds * batches_per_epoch,
        "compiled_speedup_over_torch_loop_training_batches": torch_trained_seconds / trained_seconds,
        "same_labels_compiled_and_torch_loop": same_as_torch,
        "training_batches_mean_history_length": mean_length,
        "reference_sgemm_gflops_one_thread": gflops,
        "previous_ward_seconds_per_batch_full_histories": best["recompute"],
        "ward_speedup": best["recompute"] / ward_seconds,
        "same_labels_as_previous": same,
        "epoch_seconds_with_previous_ward_extrapolated": (per_batch + best["recompute"] - ward_seconds)
        * batches_per_epoch,
        "load_average_1min": load,
        "torch_threads": torch.get_num_threads(),
    }
    md = "\n".join(
        [
            "# Pre-clustering (Ward, Lance-Williams) training speed",
            "",
            "`ward_labels` rows without a qualifier are the module's default implementation (the compiled kernel, "
            '`models/interests/ward_kernel.py`); the torch-loop rows are `implementation="torch"` on the same '
            "inputs, in the same rounds.",
            "",
            f"Command: `python benchmarks/preclustering_speed.py --batches {args.batches}"
            + (f" --threads {args.threads}" if args.threads else "")
            + f"` on "
            f"`{payload['config']}` (batch {batch}, history {length}, width {width}, K={k}).",
            "",
            "| measure | value |",
            "|---|---|",
            f"| training batch end to end (input, forward, backward, step), median of {args.batches} (s) | "
            f"{per_batch:.3f} |",
            f"| batches per epoch | {batches_per_epoch} |",
            f"| **epoch, extrapolated (s)** | **{per_batch * batches_per_epoch:.1f}** |",
            f"| `ward_labels` alone, {batch} full histories of {length}, from the points (s) | {ward_seconds:.3f} |",
            f"| `ward_labels` given the distance matrix the module computes for the medoids (s) | "
            f"{merge_seconds:.3f} |",
            f"| Ward per epoch on full random histories (given distances x batches per epoch) (s) | "
            f"{merge_seconds * batches_per_epoch:.1f} |",
            f"| `ward_labels` on the measured training batches' histories (mean length {mean_length:.1f} of "
            f"{length}) given their distances, median of {len(trained)} (s) | {trained_seconds:.3f} |",
            f"| **Ward per epoch in training (training batches' median x batches per epoch) (s)** | "
            f"**{trained_seconds * batches_per_epoch:.1f}** |",
            f'| the batched torch loop (`implementation="torch"`), same training batches, median (s) | '
            f"{torch_trained_seconds:.3f} |",
            f"| the torch loop's Ward per epoch in training (s) | {torch_trained_seconds * batches_per_epoch:.1f} |",
            f"| the torch loop on the full random histories, given distances (s) | "
            f"{best['torch_given_distances']:.3f} |",
            f"| **compiled kernel vs torch loop, training batches** | "
            f"**{torch_trained_seconds / trained_seconds:.1f}x** (same labels on every batch: {same_as_torch}) |",
            f"| previous Ward (all distances recomputed per merge), same input (s) | {best['recompute']:.3f} |",
            f"| **Ward speed-up, side by side** | **{best['recompute'] / ward_seconds:.1f}x** (same labels: {same}) |",
            f"| epoch with the previous Ward, extrapolated (s) | "
            f"{payload['epoch_seconds_with_previous_ward_extrapolated']:.1f} |",
            f"| 1-min load average while measuring (2 cores) | {load:.1f} |",
            f"| torch threads | {torch.get_num_threads()} |",
            f"| reference: one thread's float32 matmul, [512, 256] x [256, 256] (GFLOP/s) | {gflops:.0f} |",
            "",
            "Seconds are process CPU time. Limited batches: the epoch time is an extrapolation (median batch x "
            "batches per epoch). The training batches' Ward is timed on the histories the module got in those "
            "batches (their real lengths and embeddings), in the same interleaved rounds as the random inputs (best "
            "of the rounds for each). The matmul reference says how fast the machine ran: compare absolute seconds "
            "of two runs only together with it.",
        ]
    )
    out = write_result("preclustering_speed", payload, md)
    print(md, f"\nwritten: {out}", sep="\n")


if __name__ == "__main__":
    main()
