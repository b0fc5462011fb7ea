"""Collapse of multi-interest users: how alike a user's served interest vectors are.

``interest_similarity`` of a user = mean pairwise cosine of their valid (served) query vectors. 1.0 means the K
interests are one vector K times (a single-embedding model in disguise); orthogonal interests give 0. Users
with fewer than two valid vectors have no pair: NaN.
"""

from __future__ import annotations

import numpy as np

from lightning_retrieval.metrics.base import RankedLists, RetrievalMetric
from lightning_retrieval.registry import register


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def interest_similarity(vectors, valid) -> np.ndarray:
    """Mean pairwise cosine of each user's valid vectors.

    Args:
        vectors: ``[U, K, D]`` query vectors (numpy or torch).
        valid: ``[U, K]`` which vectors are served; invalid ones take part in no pair.
    Returns:
        ``[U]`` float64; NaN for users with fewer than 2 valid vectors. A zero vector has cosine 0 with any other.
    """
    vectors = _as_numpy(vectors).astype(np.float64)
    valid = _as_numpy(valid).astype(bool)
    if vectors.ndim != 3 or valid.shape != vectors.shape[:2]:
        raise ValueError(f"need vectors [U, K, D] and valid [U, K], got {vectors.shape} and {valid.shape}")
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    cos = np.einsum("ukd,ujd->ukj", unit, unit)  # [U, K, K]
    k = vectors.shape[1]
    pairs = valid[:, :, None] & valid[:, None, :] & ~np.eye(k, dtype=bool)[None]
    count = pairs.sum((1, 2))
    total = np.where(pairs, cos, 0.0).sum((1, 2))
    return np.divide(total, count, out=np.full(len(count), np.nan), where=count > 0)


@register("interest_similarity")
class InterestSimilarity(RetrievalMetric):
    """Per user: the mean pairwise cosine of their served query vectors (1 = collapsed); logged as
    ``interest_similarity`` (it does not depend on k), the mean over searched users with >= 2 served vectors.

    Users with fewer than 2 served vectors have no pair: NaN, left out of the mean and of the per-user file's mean
    (if no user has a pair, nothing is logged and the protocol's ``metrics_without_users`` names it).
    Needs ``multiple_queries``: a single-embedding model (K = 1) has no pair at all, so the metric is skipped there
    (named in the protocol) rather than logged as a value.
    """

    accuracy = False
    needs = ("user_vectors", "multiple_queries")
    depends_on_k = False

    def compute(self, lists: RankedLists, k: int) -> np.ndarray:
        if lists.user_vectors is None or lists.user_valid is None:
            raise ValueError("interest_similarity needs the users' query vectors (RankedLists.user_vectors/user_valid)")
        vectors = lists.user_vectors if lists.user_vectors.ndim == 3 else lists.user_vectors[:, None]
        return interest_similarity(vectors, np.asarray(lists.user_valid).reshape(vectors.shape[:2]))
