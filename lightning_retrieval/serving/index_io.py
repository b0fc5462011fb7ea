"""Saving and loading the ANN index of a retriever folder with FAISS's own serialisation.

A FAISS backend's index is written with ``faiss.write_index`` (a GPU index is copied to CPU first with
``faiss.index_gpu_to_cpu``) and read back with ``faiss.read_index`` into a fresh backend of the same registry
type and parameters, so search-time settings (``ef_search``, ``nprobe``) apply as in the evaluation. Backends
that hold no FAISS index (``exact_torch``) are rebuilt from the exported item vectors. ``index_ids.npy`` maps each
index row to its row of ``items.parquet``; when the index covers a serving corpus (a subset of the items) the
loaded backend is wrapped in :class:`~lightning_retrieval.retrieval.corpus.SubsetIndex`, as in the evaluation.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import faiss
import numpy as np

from lightning_retrieval.registry import resolve
from lightning_retrieval.retrieval.corpus import SubsetIndex
from lightning_retrieval.retrieval.index import IndexBackend, gpu_count
from lightning_retrieval.serving.manifest import INDEX_FILE, INDEX_IDS_FILE, ArtefactError


def component_args(component) -> dict:
    """Constructor arguments a component keeps under their own names (JSON values only): enough to rebuild it
    with ``resolve(kind, type)(**args)``."""
    args = {}
    for name, param in inspect.signature(type(component).__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or not hasattr(component, name):
            continue
        value = getattr(component, name)
        try:
            json.dumps(value)
        except TypeError:
            continue
        args[name] = value
    return args


def registry_name(component) -> str:
    """The short registry name of a component (its import path if it has none)."""
    cls = type(component)
    return getattr(cls, "registry_name", None) or f"{cls.__module__}.{cls.__qualname__}"


def save_index(index: IndexBackend, folder: Path, index_rows: np.ndarray) -> dict:
    """Write the built ``index`` (whose row ``r`` is ``items.parquet`` row ``index_rows[r]``); returns the
    manifest's ``index`` entry."""
    if isinstance(index, SubsetIndex):  # the export indexes the corpus rows itself; the inner backend is the index
        index = index.inner
    if index.index is None:
        raise ArtefactError("the index was not built; build it over the corpus vectors before saving")
    np.save(folder / INDEX_IDS_FILE, np.asarray(index_rows, dtype=np.int64), allow_pickle=False)
    raw = index.index
    file = None
    if isinstance(raw, faiss.Index):
        cpu = faiss.index_gpu_to_cpu(raw) if index.on_gpu else raw
        faiss.write_index(cpu, str(folder / INDEX_FILE))
        file = INDEX_FILE
    args = component_args(index)
    args.pop("use_gpu", None)  # a serving-time choice (Retriever.load(use_gpu=...))
    return {"type": registry_name(index), "init_args": args, "file": file, "exact": bool(index.exact)}


def load_index(folder: Path, entry: dict, vectors: np.ndarray, use_gpu: bool = False) -> IndexBackend:
    """The saved index, ready to search, answering with ``items.parquet`` row numbers.

    ``vectors [N, D]`` are the exported item vectors (rows of ``items.parquet``); backends without a FAISS file
    are rebuilt from the indexed rows.
    """
    rows = _load_rows(folder, len(vectors))
    try:
        backend = resolve("index", entry["type"])(**entry["init_args"], use_gpu=use_gpu)
    except TypeError as err:
        raise ArtefactError(f"{folder}: index {entry['type']!r} rejects the saved init_args: {err}") from err
    if entry["file"] is None:
        backend.build(vectors[rows])
    else:
        path = folder / entry["file"]
        if not path.is_file():
            raise ArtefactError(f"{path} is missing (manifest field 'index.file')")
        try:
            raw = faiss.read_index(str(path))
        except RuntimeError as err:
            raise ArtefactError(f"{path} is not a readable FAISS index: {str(err).splitlines()[0]}") from err
        if raw.ntotal != len(rows) or raw.d != vectors.shape[1]:
            raise ArtefactError(
                f"{path} holds {raw.ntotal} vectors of width {raw.d}, the artefact {len(rows)} of width "
                f"{vectors.shape[1]} ({INDEX_IDS_FILE}, items)"
            )
        if use_gpu and backend.supports_gpu:
            if gpu_count() == 0:
                raise ArtefactError("use_gpu=True but FAISS sees no GPU (is faiss-gpu installed?)")
            raw, backend.on_gpu = faiss.index_cpu_to_all_gpus(raw), True
        backend.index, backend.dim, backend._size = raw, raw.d, raw.ntotal
    if len(rows) == len(vectors) and (rows == np.arange(len(vectors))).all():
        return backend
    subset = SubsetIndex(backend, rows, len(vectors))
    subset.index, subset.on_gpu, subset.dim, subset._size = backend.index, backend.on_gpu, backend.dim, backend.size
    return subset


def _load_rows(folder: Path, num_items: int) -> np.ndarray:
    path = folder / INDEX_IDS_FILE
    if not path.is_file():
        raise ArtefactError(f"{path} is missing (the index's id map)")
    try:
        rows = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ArtefactError(f"{path} is not a readable int64 array: {err}") from err
    if rows.ndim != 1 or rows.dtype != np.int64 or len(rows) == 0:
        raise ArtefactError(f"{path} must be a non-empty 1-D int64 array, got {rows.dtype} {rows.shape}")
    if rows.min() < 0 or rows.max() >= num_items or len(np.unique(rows)) != len(rows):
        raise ArtefactError(f"{path}: index rows must be distinct item rows in [0, {num_items})")
    return rows
