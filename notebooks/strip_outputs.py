"""Remove outputs, execution counts and run metadata from the notebooks (they are committed without outputs).

python notebooks/strip_outputs.py [NOTEBOOK ...]     # default: notebooks/*.ipynb; `make strip-notebooks`
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

RUN_METADATA = ("execution", "collapsed", "scrolled", "ExecuteTime")


def unstripped_cells(book) -> list[int]:
    """Indices of code cells that still carry outputs, an execution count or run metadata."""
    return [
        i
        for i, cell in enumerate(book.cells)
        if cell.cell_type == "code"
        and (cell.get("outputs") or cell.get("execution_count") is not None or set(RUN_METADATA) & set(cell.metadata))
    ]


def strip(path: Path) -> bool:
    """Strip one notebook in place; True when it changed."""
    book = nbformat.read(path, as_version=4)
    if not unstripped_cells(book):
        return False
    for cell in book.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            for key in RUN_METADATA:
                cell.metadata.pop(key, None)
    nbformat.write(book, path)
    return True


if __name__ == "__main__":
    paths = [Path(p) for p in sys.argv[1:]] or sorted(Path(__file__).parent.glob("*.ipynb"))
    for path in paths:
        print(f"{path}: {'stripped' if strip(path) else 'already clean'}")
