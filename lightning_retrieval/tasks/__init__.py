"""LightningModules (registry kind ``tasks``): ``retrieval`` (any query kind), ``popularity``, ``id_pretrain``."""

from lightning_retrieval.tasks.base import RetrievalModel
from lightning_retrieval.tasks.popularity import PopularityRetrieval
from lightning_retrieval.tasks.retrieval import RetrievalTask

__all__ = ["PopularityRetrieval", "RetrievalModel", "RetrievalTask"]
