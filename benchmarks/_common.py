"""Helpers shared by the benchmark scripts: machine description and result files."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import faiss
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "faiss_gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def one_thread() -> None:
    """One torch and FAISS thread in this process and in the processes it starts (``OMP_NUM_THREADS=1``)."""
    import faiss
    import torch

    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)


def reference_gflops(repeats: int = 3) -> float:
    """One thread's float32 matrix-multiply speed ([512, 256] x [256, 256], best of ``repeats`` rounds of 200, process
    CPU time): a yardstick for comparing the absolute seconds of runs made on differently loaded machines."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    a, b = torch.randn(512, 256), torch.randn(256, 256)
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(200):
            a @ b
        best = min(best, time.process_time() - start)
    torch.set_num_threads(threads)
    return 200 * 2 * 512 * 256 * 256 / best / 1e9


def write_result(name: str, payload: dict, markdown: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), **payload}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    md = RESULTS / f"{name}.md"
    m = payload["machine"]
    md.write_text(
        markdown + f"\n\nMachine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, faiss {m['faiss']}, "
        f"GPU: {m['gpu'] or 'none'}; {m['date']}.\n"
    )
    return md
