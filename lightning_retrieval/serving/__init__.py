"""Serving: export a trained model as a self-describing retriever folder and answer users from it.

Folder layout (``manifest.py`` lists the files): ``manifest.json``, ``items.parquet`` (original item ids, vectors,
topic names; for ``history_space: items`` queries also the item tower's dense and side-feature inputs),
``index.faiss`` + ``index_ids.npy`` (the configured ANN index and its id map), ``users.parquet`` and
``user_model.{json,pt}`` (the user side). ``Retriever.load(folder).recommend(histories, k)`` answers with the
evaluation's own search, seen-item exclusion, merger and topic filters.
"""

from lightning_retrieval.serving.export import export_from_config, export_retriever
from lightning_retrieval.serving.manifest import FORMAT_VERSION, ArtefactError, read_manifest
from lightning_retrieval.serving.retriever import Recommendations, Retriever

__all__ = [
    "FORMAT_VERSION",
    "ArtefactError",
    "Recommendations",
    "Retriever",
    "export_from_config",
    "export_retriever",
    "read_manifest",
]
