"""Condition extractors (registry kind ``conditions``): where a conditional user tower's condition comes from."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from lightning_retrieval.registry import component_kind


@component_kind("conditions")
class ConditionExtractor(ABC):
    """Training: one condition per target item from its topics. Serving: the conditions to query a user with.

    Conditions are topic indices; -1 means "no condition" (an item without topics, an empty slot).
    """

    @abstractmethod
    def training_conditions(
        self, topic_values: torch.Tensor, topic_lengths: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``[B]`` condition per target from its flattened topic bags (``topic_values [nnz]``, ``lengths [B]``)."""

    @abstractmethod
    def serving_conditions(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(conditions [B, C], weights [B, C])`` for a user batch (``history_topic_counts [B, T]``, optional
        ``followed_topics [B, T]``); weight 0 marks an empty slot."""
