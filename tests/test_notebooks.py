"""The notebooks are executed (on a short schedule) so they never rot."""

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_the_three_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == ["01_quickstart", "02_compare_variants", "03_write_a_plugin"]


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
