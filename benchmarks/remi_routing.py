"""What REMI's training fixes do to the interests' routing: routing concentration of trained runs on the test users.

    python benchmarks/remi_routing.py configs/remi/remi_dcm.yaml configs/remi/remi_dcm_rr.yaml ... [--seeds 0 1 2]
    python benchmarks/remi_routing.py configs/remi/remi_sa.yaml --runs runs/multihead_attention --name sa_8_epochs

Each config's runs ``runs/<stem>/seed_N`` (written by ``make tables-remi``) are loaded from their tested checkpoint
(the newest ``epoch=*.ckpt``; ``--runs`` reads other run folders, one per config, e.g. the committed 8-epoch
multi-interest runs) into the model the config builds; the interest module runs on the test users'
histories and its routing matrix ``[B, K, L]`` (``InterestModule.last_routing``) is summarised over valid interests:

- ``concentration``: mean ``Σ_l p_kl² - 1/n`` (:func:`routing_concentration`: 0 spread evenly, ``1 - 1/n`` one item);
- ``items_per_interest``: mean ``1 / Σ_l p_kl²``, the effective number of history items an interest is made of;
- ``single_item_share``: share of valid interests that take at least 90% of their routing from one item;
- ``interest_cosine``: mean pairwise cosine of a user's valid interests (1 = collapsed onto one vector).

Mean and standard deviation over the seeds go to ``benchmarks/results/<name>.{json,md}`` (default ``remi_routing``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from _training import build_from_config

from lightning_retrieval.checkpoints import safe_torch_load
from lightning_retrieval.configs import run_dir_of
from lightning_retrieval.queries.interests import interest_collapse
from lightning_retrieval.queries.regularizers import routing_concentration

from _common import write_result

STATS = ("concentration", "items_per_interest", "single_item_share", "interest_cosine")


@torch.no_grad()
def measure_run(config: str, run_dir: Path) -> dict[str, float]:
    ckpts = sorted(run_dir.rglob("epoch=*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        raise SystemExit(f"{run_dir}: no epoch=*.ckpt checkpoint (run `make tables-remi` first)")
    model, datamodule = build_from_config(config)
    model.load_state_dict(safe_torch_load(ckpts[-1])["state_dict"])
    model.eval()
    datamodule.setup("test")
    module = model.queries.interests
    sums = dict.fromkeys(STATS, 0.0)
    counts = dict.fromkeys(STATS, 0)
    for batch in datamodule.test_dataloader():
        mask = batch["history_mask"]
        interests, valid = module(model.history_embeddings(batch), mask)
        routing = module.last_routing()
        p = routing * mask[:, None, :]
        p = p / p.sum(-1, keepdim=True).clamp(min=1e-12)
        keep = valid & (mask.sum(1, keepdim=True) > 1)
        sums["concentration"] += float(routing_concentration(routing, mask)[keep].sum())
        sums["items_per_interest"] += float((1.0 / (p * p).sum(-1))[keep].sum())
        sums["single_item_share"] += float((p.max(-1).values >= 0.9)[keep].sum())
        for name in ("concentration", "items_per_interest", "single_item_share"):
            counts[name] += int(keep.sum())
        cosine = interest_collapse(interests, valid)
        sums["interest_cosine"] += float(cosine.nan_to_num(0.0).sum())
        counts["interest_cosine"] += int(cosine.isfinite().sum())
    return {name: sums[name] / max(counts[name], 1) for name in STATS}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--runs", nargs="+", help="run folders (holding seed_N), one per config; default runs/<stem>")
    parser.add_argument("--name", default="remi_routing", help="result file name under benchmarks/results/")
    args = parser.parse_args(argv)
    runs = [Path(r) for r in args.runs] if args.runs else [run_dir_of(c) for c in args.configs]
    if len(runs) != len(args.configs):
        raise SystemExit(f"--runs needs one folder per config: {len(args.configs)} configs, {len(runs)} folders")
    rows, payload = [], {}
    for config, run_dir in zip(args.configs, runs):
        per_seed = [measure_run(config, run_dir / f"seed_{seed}") for seed in args.seeds]
        name = f"{Path(config).stem} ({run_dir})"
        stats = {s: (float(np.mean([r[s] for r in per_seed])), float(np.std([r[s] for r in per_seed]))) for s in STATS}
        payload[name] = {"seeds": args.seeds, "per_seed": per_seed, "mean_std": stats}
        rows.append(f"| {name} | " + " | ".join(f"{m:.3f} ± {sd:.3f}" for m, sd in stats.values()) + " |")
    markdown = (
        "Routing of trained interest modules on the test users (mean ± standard deviation over seeds "
        f"{' '.join(map(str, args.seeds))}; `python benchmarks/remi_routing.py {' '.join(argv)}`).\n\n"
        "| config | " + " | ".join(STATS) + " |\n|---|" + "---|" * len(STATS) + "\n" + "\n".join(rows)
    )
    print(markdown)
    write_result(args.name, {"runs": payload}, markdown)


if __name__ == "__main__":
    main(sys.argv[1:])
