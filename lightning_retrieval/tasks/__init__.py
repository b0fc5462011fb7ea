"""LightningModules (registry kind ``tasks``)."""

from lightning_retrieval.tasks.base import RetrievalModel
from lightning_retrieval.tasks.popularity import PopularityRetrieval
from lightning_retrieval.tasks.two_tower import TwoTowerRetrieval

__all__ = ["PopularityRetrieval", "RetrievalModel", "TwoTowerRetrieval"]
