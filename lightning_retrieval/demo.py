"""``make demo``: train the default two-tower config, test it and the popularity baseline, print a table.

Runs the same CLI a user runs; each step is printed as the command line it is equivalent to.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lightning_retrieval.cli import main as cli
from lightning_retrieval.reporting import results_table

CONFIGS = Path("configs")


def run(args: list[str]) -> None:
    print("\n$ lightning-retrieval " + " ".join(args), flush=True)
    start = time.perf_counter()
    cli(args + (["--trainer.enable_progress_bar=false"] if not sys.stdout.isatty() else []))
    print(f"  ({time.perf_counter() - start:.1f} s)", flush=True)


def main() -> None:
    start = time.perf_counter()
    two_tower = str(CONFIGS / "two_tower.yaml")
    run(["fit", "--config", two_tower])
    best = sorted(Path("runs/two_tower/checkpoints").glob("epoch=*.ckpt"), key=lambda p: p.stat().st_mtime)
    run(
        [
            "test",
            "--config",
            two_tower,
            "--ckpt_path",
            str(best[-1] if best else "runs/two_tower/checkpoints/last.ckpt"),
        ]
    )
    run(["test", "--config", str(CONFIGS / "popularity.yaml")])
    print("\nTest split (leave-last-out, full corpus, exact inner-product index, seen items excluded):\n")
    print(results_table(["runs/two_tower", "runs/popularity"]))
    print(f"\nResult cards: runs/*/csv/version_*/result_card_test.md   total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
