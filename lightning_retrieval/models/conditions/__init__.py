"""Condition extractors (registry kind ``conditions``): item topics -> training conditions, users -> serving ones."""

from lightning_retrieval.models.conditions.base import ConditionExtractor
from lightning_retrieval.models.conditions.topics import FollowedTopicsCondition, UniformTopicCondition

__all__ = ["ConditionExtractor", "FollowedTopicsCondition", "UniformTopicCondition"]
