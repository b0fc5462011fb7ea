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

    def serving_conditions(self, batch):
        return top_topics(batch["history_topic_counts"], self.num_serving)


def top_topics(scores: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` highest-scoring topics per user with normalised weights; zero-score slots are empty (-1, 0)."""
    c = min(n, scores.shape[1])
    top, topics = scores.float().topk(c, dim=1)
    weights = top / scores.float().sum(1, keepdim=True).clamp(min=1e-12)
    return torch.where(top > 0, topics, -1), torch.where(top > 0, weights, 0.0)


@register("followed_topics")
class FollowedTopicsCondition(UniformTopicCondition):
    """Explicit interests: serve the topics each user follows (``followed_topics`` in the batch, from the users
    table's followed-topics column), up to ``num_serving``, in topic order with equal weights; users who follow
    nothing fall back to their inferred top history topics. Training is the same as ``uniform_topic``."""

    def serving_conditions(self, batch):
        if "followed_topics" not in batch:
            raise KeyError(
                "followed_topics: the data has no followed-topics column (InteractionsFileSource user_topics_column)"
            )
        followed = batch["followed_topics"]
        # rank followed topics first, in topic order (earlier topic ids slightly higher)
        ranked = followed * (1.0 + 1.0 / (2.0 + torch.arange(followed.shape[1], device=followed.device)))
        topics, _ = top_topics(ranked, self.num_serving)
        weights = torch.where(topics >= 0, 1.0, 0.0)
        weights = weights / weights.sum(1, keepdim=True).clamp(min=1)
        inferred, inferred_w = top_topics(batch["history_topic_counts"], self.num_serving)
        follows_none = followed.sum(1) == 0
        return (
            torch.where(follows_none[:, None], inferred, topics),
            torch.where(follows_none[:, None], inferred_w, weights),
        )
