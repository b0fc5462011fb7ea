"""What metrics are computed from: each user's ranked top-K list, and the metric contract."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lightning_retrieval.registry import component_kind


@dataclass
class RankedLists:
    """Ranked retrieval results of U users, best first.

    items: ``[U, K]`` item ids (-1 for users that were not searched, see ``valid``).
    hits: ``[U, K]`` True where the item is one of the user's targets.
    num_targets: ``[U]`` number of targets per user.
    valid: ``[U]`` False for masked users (zero/padded query vectors): they retrieved nothing.
    item_topics_offsets / item_topics_values: topics of every corpus item (CSR), for topic diversity.
    item_embeddings: ``[N, D]`` corpus vectors, for embedding-space diversity.
    user_vectors / user_valid: ``[U, K, D]`` / ``[U, K]`` the users' queries, e.g. for interest similarity.
    num_items: catalogue size (item ids are in [0, num_items)).
    corpus_size: number of indexed items (defaults to num_items); the denominator of coverage.
    """

    items: np.ndarray
    hits: np.ndarray
    num_targets: np.ndarray
    valid: np.ndarray
    num_items: int
    item_topic_offsets: np.ndarray | None = None
    item_topic_values: np.ndarray | None = None
    item_embeddings: np.ndarray | None = None
    corpus_size: int | None = None  # indexed items when the index holds a serving corpus subset
    user_vectors: np.ndarray | None = None  # [U, K, D] the users' query vectors (K = 1 for one query)
    user_valid: np.ndarray | None = None  # [U, K] which query slots were searched

    @property
    def depth(self) -> int:
        return self.items.shape[1]

    def topic_table(self) -> np.ndarray:
        """``[N, T]`` multi-hot item topics (built once per lists object)."""
        if self.item_topic_offsets is None:
            raise ValueError("topic metrics need item topics; this dataset has none (drop the topic metrics)")
        if getattr(self, "_topic_table", None) is None:
            offsets, values = self.item_topic_offsets, self.item_topic_values
            num_topics = int(values.max()) + 1 if values.size else 1
            table = np.zeros((self.num_items, num_topics), dtype=np.float32)
            table[np.repeat(np.arange(self.num_items), np.diff(offsets)), values] = 1.0
            self._topic_table = table
        return self._topic_table

    def unit_embeddings(self) -> np.ndarray:
        """``[N, D]`` L2-normalised item vectors (built once per lists object)."""
        if self.item_embeddings is None:
            raise ValueError("embedding_diversity needs item embeddings")
        if getattr(self, "_unit", None) is None:
            emb = self.item_embeddings.astype(np.float64)
            self._unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return self._unit


@component_kind("metrics")
class RetrievalMetric:
    """A metric at cut-off k.

    ``per_user`` metrics return one value per user ``[U]`` (the reported value is their mean over users, so
    no batch size can change it); corpus-level metrics (``per_user = False``) return one float.
    ``accuracy`` metrics count masked users as 0; the others are averaged over searched users only.
    ``needs`` names the optional inputs the metric reads (``item_topics``, ``item_embeddings``,
    ``user_vectors``, ``multiple_queries``: a model with K > 1 queries per user): without them the evaluator skips
    it and says so in the protocol. Per-user values may be NaN for a user the metric does not apply to (left out
    of the mean). ``depends_on_k = False`` metrics are computed once and logged without ``@k``.
    """

    per_user: bool = True
    accuracy: bool = True
    needs: tuple[str, ...] = ()
    depends_on_k: bool = True

    def compute(self, lists: RankedLists, k: int) -> np.ndarray | float:
        raise NotImplementedError

    @property
    def name(self) -> str:
        return type(self).registry_name
