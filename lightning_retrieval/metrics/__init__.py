"""Retrieval metrics (registry kind ``metrics``), vectorised over users."""

from lightning_retrieval.metrics.base import RankedLists, RetrievalMetric
from lightning_retrieval.metrics.library import (
    NDCG,
    Coverage,
    DistinctTopics,
    EmbeddingDiversity,
    HitRate,
    MeanReciprocalRank,
    Precision,
    Recall,
    TopicDiversity,
)

__all__ = [
    "Coverage",
    "DistinctTopics",
    "EmbeddingDiversity",
    "HitRate",
    "MeanReciprocalRank",
    "NDCG",
    "Precision",
    "RankedLists",
    "Recall",
    "RetrievalMetric",
    "TopicDiversity",
]
