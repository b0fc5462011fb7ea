"""Topic conditions: a uniformly sampled topic of the target in training, inferred top topics at serving."""

from __future__ import annotations

import torch

from lightning_retrieval.models.conditions.base import ConditionExtractor
from lightning_retrieval.registry import register


@register("uniform_topic")
class UniformTopicCondition(ConditionExtractor):
    """RecSys'24 condition extraction: sample one of the target item's topics uniformly (seeded generator).

    Serving: the user's ``num_serving`` most frequent history topics (inferred interests), weighted by their
    share of the history's topic mentions.
    """

    def __init__(self, num_serving: int = 5):
        if num_serving < 1:
            raise ValueError(f"num_serving must be >= 1, got {num_serving}")
        self.num_serving = num_serving

    def training_conditions(self, topic_values, topic_lengths, generator=None):
        lengths = topic_lengths.long()
        offsets = torch.cumsum(lengths, 0) - lengths
        draw = torch.rand(lengths.shape, generator=generator).to(lengths.device)
        pick = offsets + torch.floor(draw * lengths.clamp(min=1)).long().clamp(max=(lengths - 1).clamp(min=0))
        chosen = topic_values[pick.clamp(max=max(topic_values.numel() - 1, 0))] if topic_values.numel() else pick
        return torch.where(lengths > 0, chosen, torch.full_like(chosen, -1))

    def serving_conditions(self, history_topic_counts):
        c = min(self.num_serving, history_topic_counts.shape[1])
        counts, topics = history_topic_counts.float().topk(c, dim=1)
        total = history_topic_counts.float().sum(1, keepdim=True).clamp(min=1)
        weights = counts / total
        return torch.where(counts > 0, topics, -1), weights
