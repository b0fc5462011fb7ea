"""Retrieval: FAISS index backends and the vectorised full-corpus evaluator."""

from lightning_retrieval.retrieval.evaluator import EvaluationResult, RankedLists, RetrievalEvaluator
from lightning_retrieval.retrieval.index import (
    ExactIndex,
    HNSWIndex,
    IndexBackend,
    IVFPQIndex,
    RetrievalIndexError,
    TorchExactIndex,
)

__all__ = [
    "EvaluationResult",
    "ExactIndex",
    "HNSWIndex",
    "IVFPQIndex",
    "IndexBackend",
    "RankedLists",
    "RetrievalEvaluator",
    "RetrievalIndexError",
    "TorchExactIndex",
]
