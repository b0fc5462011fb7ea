"""Interest modules (registry kind ``interests``): a user's history -> K interest embeddings."""

from lightning_retrieval.models.interests.base import InterestModule

__all__ = ["InterestModule"]
