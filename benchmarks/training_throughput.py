"""Training examples/s side by side with torch-rechub, in alternating rounds (both sides under the same load).

    python benchmarks/training_throughput.py [--rounds 3] [--batches 15]

Pairs at batch 512, width 64, history 50 on our exported MovieLens split: ours ``two_tower`` / YoutubeDNN,
``multihead_attention`` / ComiRec-SA, ``dynamic_routing`` / MIND. Each round times ``--batches`` batches of every
model after a warm-up batch, ours in this process through the Lightning loop (``_training.time_training``), the
peers in their venv (``PEERS_PYTHON``; ``peers/rechub_models.py --batches``) through ``MatchTrainer``. A batch's
time is end to end (the step and building the next batch) on the process's CPU clock (``--clock cpu``, default:
on a machine shared with other work, wall time also counts the wait for a core; ``--clock wall`` on a quiet
one). Reported: the best round's median seconds per batch of each model, and ours / peer. Both sides run one
torch thread (``OMP_NUM_THREADS=1``, set here).
Losses differ (ours: in-batch sampled softmax with logQ over 511 in-batch negatives; torch-rechub: list-wise
softmax over 100 uniform negatives, its multi-interest models take no in-batch negatives), as in
``peer_comparison.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

from _training import build_from_config, time_training

from lightning_retrieval.allocator import DEFAULT_THRESHOLD

from _common import one_thread, write_result

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS_PYTHON = os.environ.get("PEERS_PYTHON", str(ROOT / ".venv-peers" / "bin" / "python"))
PAIRS = {"two_tower": "YoutubeDNN", "multihead_attention": "ComiRec-SA", "dynamic_routing": "MIND"}
# The multi-interest models again with the peers' tower shape: torch-rechub's ComiRec-SA and MIND map
# [user, interest] with one linear layer and score raw item embeddings, where our configs run an MLP (256-128,
# dropout) in both towers, K times on the user side to pick the interest. Same config otherwise.
LINEAR = " (linear towers)"
LINEAR_TOWERS = [
    f"--model.{tower}.init_args.crossing.init_args.hidden_dims=[]" for tower in ("user_tower", "item_tower")
]
MATCHED = ["multihead_attention", "dynamic_routing"]


# glibc's environment form of the allocator setting our tasks apply on CPU (lightning_retrieval/allocator.py)
SAME_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(DEFAULT_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(DEFAULT_THRESHOLD)}
TUNED = " (same allocator)"


def peers(models: list[str], batches: int, clock: str, env_extra: dict | None = None) -> dict[str, float]:
    """Median seconds per batch of each torch-rechub model (one peers-venv process for all of them)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env_extra or {})}
    args = [PEERS_PYTHON, str(BENCH / "peers" / "rechub_models.py"), "--models", ",".join(models)]
    args += ["--batches", str(batches), "--clock", clock]
    out = subprocess.run(args, cwd=BENCH, env=env, check=True, capture_output=True)
    return {r["model"]: r["batch_seconds_median"] for r in json.loads(out.stdout.decode().strip().splitlines()[-1])}


def pair_row(ours: str, peer: str, best: dict, rounds: list[dict], batch: int) -> dict:
    """One model of ours against its torch-rechub peer: examples/s from the best rounds and the ratios, also
    against the peer given our allocator setting, and the same ratios within each round."""
    ours_s, peer_s, tuned_s = best[ours], best[peer], best[peer + TUNED]
    return {
        "ours": ours,
        "peer": peer,
        "ours_examples_per_second": batch / ours_s,
        "peer_examples_per_second": batch / peer_s,
        "ratio": peer_s / ours_s,
        "peer_same_allocator_examples_per_second": batch / tuned_s,
        "ratio_same_allocator": tuned_s / ours_s,
        # the same ratios within each round (both sides timed minutes apart): spread of the headline
        "round_ratios": sorted(r[peer] / r[ours] for r in rounds),
        "round_ratios_same_allocator": sorted(r[peer + TUNED] / r[ours] for r in rounds),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=15)
    ap.add_argument("--models", default=",".join(PAIRS), help=f"ours, comma-separated: {', '.join(PAIRS)}")
    ap.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="process CPU time (default: robust to other load) or wall",
    )
    args = ap.parse_args()
    one_thread()
    ours_names = args.models.split(",")
    unknown = sorted(set(ours_names) - set(PAIRS))
    if unknown:
        raise SystemExit(f"unknown models {unknown}; valid: {', '.join(PAIRS)}")
    if not (BENCH / ".work" / "split.npz").exists():
        subprocess.run([sys.executable, str(BENCH / "peers" / "export_split.py")], cwd=BENCH, check=True)
    start = time.perf_counter()
    built = {name: build_from_config(str(ROOT / "configs" / f"{name}.yaml")) for name in ours_names}
    matched = [name for name in MATCHED if name in ours_names]
    built.update(
        {name + LINEAR: build_from_config(str(ROOT / "configs" / f"{name}.yaml"), LINEAR_TOWERS) for name in matched}
    )
    rounds = []
    for r in range(args.rounds):
        row = {}
        for name in built:
            model, data = built[name]
            clock = time.process_time if args.clock == "cpu" else time.perf_counter
            row[name] = time_training(model, data, args.batches, clock=clock)["batch_seconds_median"]
            print(f"round {r}: ours {name} {row[name] * 1e3:.1f} ms/batch", flush=True)
        row.update(peers([PAIRS[name] for name in ours_names], args.batches, args.clock))
        tuned = peers([PAIRS[name] for name in ours_names], args.batches, args.clock, SAME_ALLOCATOR)
        row.update({peer + TUNED: seconds for peer, seconds in tuned.items()})
        print(f"round {r}: {json.dumps(row)}", flush=True)
        rounds.append(row)
    batch = built[ours_names[0]][1].batch_size
    best = {name: min(r[name] for r in rounds) for name in rounds[0]}
    table = [pair_row(name, PAIRS[name], best, rounds, batch) for name in ours_names]
    lines = [
        "# Training throughput: ours vs torch-rechub, side by side",
        "",
        f"Command: `python benchmarks/training_throughput.py --rounds {args.rounds} --batches {args.batches} "
        f"--clock {args.clock}` "
        f"(`make bench`). {args.rounds} alternating rounds, each timing {args.batches} batches of every model after "
        f"a warm-up batch; best round's median seconds per batch, end to end (step + building the next batch), "
        f"on the {'process CPU' if args.clock == 'cpu' else 'wall'} clock. "
        f"Batch {batch}, width 64, history 50, one torch thread per process. Whole run: "
        f"{(time.perf_counter() - start) / 60:.1f} min.",
        "",
        "| ours | examples/s | torch-rechub | examples/s | ours / peer | peer, our allocator setting | ours / it |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table:
        lines.append(
            f"| {row['ours']} | {row['ours_examples_per_second']:,.0f} | {row['peer']} | "
            f"{row['peer_examples_per_second']:,.0f} | **{row['ratio']:.2f}x** | "
            f"{row['peer_same_allocator_examples_per_second']:,.0f} | {row['ratio_same_allocator']:.2f}x |"
        )
    linear = [pair_row(name + LINEAR, PAIRS[name], best, rounds, batch) for name in matched]
    if linear:
        lines += [
            "",
            "The multi-interest models with the peers' tower shape (`hidden_dims: []` in both towers: LayerNorm per "
            "field and one linear map, as torch-rechub's ComiRec-SA and MIND map [user, interest] with one linear "
            "layer; our configs run a 256-128 MLP with dropout in both towers, on all K interests on the user side to "
            "pick one). Same rounds, same peer times:",
            "",
            "| ours | examples/s | torch-rechub | ours / peer | ours / peer, our allocator setting | within-round "
            "median [min, max] |",
            "|---|---|---|---|---|---|",
        ]
        for row in linear:
            rr = row["round_ratios"]
            lines.append(
                f"| {row['ours']} | {row['ours_examples_per_second']:,.0f} | {row['peer']} | **{row['ratio']:.2f}x** | "
                f"{row['ratio_same_allocator']:.2f}x | {median(rr):.2f}x [{rr[0]:.2f}, {rr[-1]:.2f}] |"
            )
    lines += [
        "",
        "Within each round (ours / peer from that round's times only; median [min, max] over the rounds): "
        + "; ".join(
            f"{row['ours']}: {median(row['round_ratios']):.2f}x [{row['round_ratios'][0]:.2f}, "
            f"{row['round_ratios'][-1]:.2f}], same allocator {median(row['round_ratios_same_allocator']):.2f}x "
            f"[{row['round_ratios_same_allocator'][0]:.2f}, {row['round_ratios_same_allocator'][-1]:.2f}]"
            for row in table
        )
        + ".",
        "",
        "Ours: Lightning loop, in-batch sampled softmax with logQ (511 in-batch negatives), MLP towers over the ID "
        "tables. torch-rechub: `MatchTrainer`, list-wise softmax over 1 positive + 100 uniform negatives (its "
        "multi-interest models take no in-batch negatives). Not the same loss: the ratio is what each framework's "
        "standard recipe costs per example.",
        "",
        "Our tasks keep freed tensor memory in the process on CPU (glibc's mmap and trim thresholds at "
        f"{DEFAULT_THRESHOLD // 2**20} MiB, `lightning_retrieval/allocator.py`): without it each step faults its "
        "activations' pages in again. torch-rechub runs with glibc's defaults; the last two columns give it the "
        "same setting (glibc's `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_`), timed in the same rounds.",
        "",
        "Per round (seconds per batch): "
        + "; ".join(json.dumps({k: round(v, 4) for k, v in r.items()}) for r in rounds),
    ]
    result = {"rounds": rounds, "table": table, "linear_towers": linear, "args": vars(args)}
    md = write_result("training_throughput", result, "\n".join(lines))
    print(md.read_text())


if __name__ == "__main__":
    main()
