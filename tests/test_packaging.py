"""Install logic and packaging metadata: one venv per host, a clear Python check, extras that match the pins."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60)


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


@pytest.mark.parametrize(("host", "venv", "other"), [("cpu", ".venv", ".venv-gpu"), ("gpu", ".venv-gpu", ".venv/")])
def test_each_host_installs_into_its_own_venv(host, venv, other):
    done = _make("-n", "-B", "install", f"HOST={host}")  # dry run: print the recipe, run nothing
    assert done.returncode == 0, done.stderr
    assert f"{venv}/bin/python -m pip install" in done.stdout
    assert f"-c requirements/{host}.txt" in done.stdout and f"[dev,{host}]" in done.stdout
    assert other not in done.stdout.replace(f"{venv}/", "")
    assert f"touch {venv}/.installed-{host}" in done.stdout


def test_a_venv_of_the_other_host_is_refused(tmp_path):
    (tmp_path / ".installed-cpu").touch()
    # PYTHON=false: if the refusal did not stop the recipe, the next step fails without the refusal's message
    done = _make("-B", "install", "HOST=gpu", f"VENV={tmp_path}", "PYTHON=false")
    assert done.returncode != 0
    assert "holds the HOST=cpu install" in done.stderr
    assert not (tmp_path / "bin").exists()


def test_a_too_old_python_is_named_before_anything_is_installed(tmp_path):
    venv = tmp_path / "venv"
    done = _make("-B", "install", f"VENV={venv}", "PYTHON_MIN=99.0")
    assert done.returncode != 0
    assert "needs Python >= 99.0" in done.stderr and "PYTHON=python99.0" in done.stderr
    assert not venv.exists()


def test_an_unknown_host_is_an_error():
    done = _make("-n", "install", "HOST=tpu")
    assert done.returncode != 0 and "choose HOST=cpu or HOST=gpu" in done.stderr


def test_torch_comes_from_the_hosts_pytorch_index_overridably():
    cpu = _make("-n", "-B", "install").stdout
    assert '--index-url "https://download.pytorch.org/whl/cpu" torch==2.13.0' in cpu
    gpu = _make("-n", "-B", "install", "HOST=gpu", "TORCH_INDEX_URL=https://mirror.example/cu128").stdout
    assert '--index-url "https://mirror.example/cu128" torch==2.13.0 fbgemm-gpu==1.8.0' in gpu


def test_native_extras_match_the_host_pins_and_never_mix_builds():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for host in ("cpu", "gpu"):
        lock = _pins(REPO / f"requirements/{host}.txt")
        for requirement in extras[host]:
            name, version = requirement.split("==")
            assert lock.get(name.lower()) == version, (host, requirement)
    cpu_names = {r.split("==")[0] for r in extras["cpu"]}
    gpu_names = {r.split("==")[0] for r in extras["gpu"]}
    assert {"faiss-cpu", "fbgemm-gpu-cpu"} <= cpu_names and not {"faiss-gpu", "fbgemm-gpu"} & cpu_names
    assert {"faiss-gpu", "fbgemm-gpu"} <= gpu_names and not {"faiss-cpu", "fbgemm-gpu-cpu"} & gpu_names
    assert "faiss-cpu" not in _pins(REPO / "requirements/gpu.txt")
    assert "faiss-gpu" not in _pins(REPO / "requirements/cpu.txt")


def test_license_and_type_marker_are_shipped():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"
    assert "Apache License" in (REPO / "LICENSE").read_text()[:200]
    assert (REPO / "lightning_retrieval/py.typed").is_file()
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["lightning_retrieval"]


def test_the_private_torch_all_gather_we_use_exists_and_carries_gradients(tmp_path):
    """losses/sampled_softmax.py uses ``_functional_collectives.all_gather_single_autograd``: torch 2.13 deprecates
    the public ``torch.distributed.nn.functional.all_gather`` in its favour. One gloo process: gather is identity."""
    import inspect
    import warnings

    import torch
    import torch.distributed as dist
    import torch.distributed._functional_collectives as funcol
    import torch.distributed.nn.functional as public

    assert {"gather_dim", "group"} <= set(inspect.signature(funcol.all_gather_single_autograd).parameters)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        x = torch.arange(6.0).view(3, 2).requires_grad_(True)
        gathered = funcol.all_gather_single_autograd(x, gather_dim=0, group=dist.group.WORLD)
        gathered = funcol.wait_tensor(gathered) if hasattr(funcol, "wait_tensor") else gathered
        torch.testing.assert_close(gathered, x.detach())
        (gathered * torch.arange(6.0).view(3, 2)).sum().backward()
        torch.testing.assert_close(x.grad, torch.arange(6.0).view(3, 2))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            public.all_gather(x)
        assert any("deprecated" in str(w.message) for w in caught)  # when this stops, switch to the public one
    finally:
        dist.destroy_process_group()
