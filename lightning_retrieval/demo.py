"""``make demo``: train the default two-tower config, test it and the popularity baseline, print a table.

Runs the same CLI a user runs (through ``lightning-retrieval compare``'s runner); each step is printed as the
command line it is equivalent to.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lightning_retrieval.compare import run_config
from lightning_retrieval.reporting import results_table

CONFIGS = Path("configs")


def main() -> None:
    start = time.perf_counter()
    for name in ("two_tower.yaml", "popularity.yaml"):
        run_config(CONFIGS / name, quiet=not sys.stdout.isatty())
    print("\nTest split (leave-last-out, full corpus, exact inner-product index, seen items excluded):\n")
    print(results_table(["runs/two_tower", "runs/popularity"]))
    print(f"\nResult cards: runs/*/csv/version_*/result_card_test.md   total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
