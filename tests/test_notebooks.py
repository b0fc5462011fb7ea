"""The notebooks are committed without outputs and executed (on a short schedule, into a temporary directory)
so they never rot."""

import importlib.util

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
_spec = importlib.util.spec_from_file_location("strip_outputs", REPO / "notebooks/strip_outputs.py")
strip_outputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(strip_outputs)


def test_the_three_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == ["01_quickstart", "02_compare_variants", "03_write_a_plugin"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_committed_without_outputs(path):
    unstripped = strip_outputs.unstripped_cells(nbformat.read(path, as_version=4))
    assert not unstripped, f"{path.name}: cells {unstripped} carry outputs; run `make strip-notebooks`"


def test_stripping_removes_outputs_counts_and_run_metadata(tmp_path):
    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)"), nbformat.v4.new_markdown_cell("x")])
    book.cells[0].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    book.cells[0].execution_count = 3
    book.cells[0].metadata["execution"] = {"iopub.status.idle": "2026-12-01T00:00:00Z"}
    path = tmp_path / "run.ipynb"
    nbformat.write(book, path)
    assert strip_outputs.unstripped_cells(nbformat.read(path, as_version=4)) == [0]
    assert strip_outputs.strip(path) and not strip_outputs.strip(path)
    stripped = nbformat.read(path, as_version=4)
    assert strip_outputs.unstripped_cells(stripped) == [] and stripped.cells[0].source == "print(1)"


def test_no_rendered_files_beside_the_notebooks():
    allowed = {".ipynb", ".py"}
    assert not [p.name for p in (REPO / "notebooks").iterdir() if p.is_file() and p.suffix not in allowed]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_RETRIEVAL_FAST", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_SERVICE", raising=False)  # the kernel must not attach to this process's W&B service
    book = nbformat.read(path, as_version=4)
    for cell in book.cells:  # run from a clean state, not the saved outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    if path.stem == "01_quickstart":
        assert "two-tower" in text and "popularity" in text
    if path.stem == "02_compare_variants":
        assert text.count("test recall@50") == 3 and any("image/png" in o.get("data", {}) for o in outputs)
    if path.stem == "03_write_a_plugin":
        assert "FieldMixer" in text and "field_mixer" in text
