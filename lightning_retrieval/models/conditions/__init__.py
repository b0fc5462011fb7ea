"""Condition extractors (registry kind ``conditions``): item topics -> training conditions, users -> serving ones."""

from lightning_retrieval.models.conditions.base import ConditionExtractor

__all__ = ["ConditionExtractor"]
