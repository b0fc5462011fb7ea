"""The contract condition extractors implement for conditional retrieval."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from lightning_retrieval.registry import component_kind


@component_kind("conditions")
class ConditionExtractor(ABC):
    """Where a conditional user tower's condition comes from.

    ``training_conditions(topic_values [nnz], topic_lengths [B], generator) -> [B]`` picks one condition per
    target item from its topics (items without topics get -1: no condition); ``serving_conditions(...)``
    yields the conditions a user is queried with (followed or inferred topics, with weights).
    """

    @abstractmethod
    def training_conditions(
        self, topic_values: torch.Tensor, topic_lengths: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor: ...
