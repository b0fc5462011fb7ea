"""Start-up time of the CLI against ``python -c "import torch"`` (the floor every command pays).

    python benchmarks/startup.py [--repeats 3] [--output benchmarks/results/startup.md]

Each command runs in a fresh process from the repository root with W&B disabled; the table reports the median
wall time over the repeats and its ratio to the ``import torch`` median. The 1-minute load average before and
after is recorded: on a shared machine the absolute times move with the load, the ratios much less.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
COMMANDS = {
    'python -c "import torch"': [PY, "-c", "import torch"],
    'python -c "import lightning.pytorch"': [PY, "-c", "import lightning.pytorch"],  # what every command needs
    "lightning-retrieval --help": [PY, "-m", "lightning_retrieval", "--help"],
    "lightning-retrieval registry": [PY, "-m", "lightning_retrieval", "registry"],
    "lightning-retrieval fit --help": [PY, "-m", "lightning_retrieval", "fit", "--help"],
    "lightning-retrieval test --config configs/popularity.yaml --print_config": [
        PY,
        "-m",
        "lightning_retrieval",
        "test",
        "--config",
        "configs/popularity.yaml",
        "--print_config",
    ],
    "lightning-retrieval fit --config configs/two_tower.yaml --print_config": [
        PY,
        "-m",
        "lightning_retrieval",
        "fit",
        "--config",
        "configs/two_tower.yaml",
        "--print_config",
    ],
}


def time_command(argv: list[str], repeats: int) -> tuple[float, list[float]]:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            print(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-1500:]}", file=sys.stderr)
            return float("nan"), times
    return statistics.median(times), times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, help="write the Markdown table here")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    rows = []
    for name, command in COMMANDS.items():
        median, times = time_command(command, args.repeats)
        rows.append((name, median, times))
        print(f"{name:75s} {median:6.2f} s  ({', '.join(f'{t:.2f}' for t in times)})", flush=True)
    load_after = os.getloadavg()[0]
    floor = rows[0][1]
    lines = [
        f"# CLI start-up ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"`python benchmarks/startup.py --repeats {args.repeats}` on {os.cpu_count()} CPU cores, Python "
        f"{platform.python_version()}; 1-minute load average {load_before:.1f} before, {load_after:.1f} after.",
        "Median wall time of a fresh process (W&B disabled) and its multiple of `import torch`.",
        "",
        "| command | median (s) | x import torch | runs (s) |",
        "|---|---:|---:|---|",
    ]
    for name, median, times in rows:
        lines.append(f"| `{name}` | {median:.2f} | {median / floor:.1f} | {', '.join(f'{t:.2f}' for t in times)} |")
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(table)


if __name__ == "__main__":
    main()
