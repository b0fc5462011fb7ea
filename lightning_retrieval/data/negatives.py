"""Corpus negative samplers (registry kind ``negative_samplers``) for mixed negative sampling.

A sampler draws item indices shared by the whole batch, and returns the log-probability of each draw
under the sampling distribution, which the loss subtracts from the logit (sampling-bias correction).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from lightning_retrieval.registry import component_kind, register


@component_kind("negative_samplers")
class NegativeSampler(ABC):
    """Draws ``num_negatives`` corpus items per batch."""

    def __init__(self, num_negatives: int = 256):
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        self.num_negatives = num_negatives

    @abstractmethod
    def probabilities(self, item_counts: np.ndarray) -> np.ndarray:
        """Sampling probability of every item, ``[N]``, summing to 1."""

    def sample(self, item_counts: np.ndarray, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids [M], log_q [M])``: M = num_negatives draws and the log expected count of each in one draw set."""
        probs = torch.as_tensor(self.probabilities(item_counts), dtype=torch.float64)
        ids = torch.multinomial(probs, self.num_negatives, replacement=True, generator=generator)
        log_q = torch.log(probs[ids] * self.num_negatives).float()
        return ids, log_q


@register("uniform")
class UniformNegativeSampler(NegativeSampler):
    """Every corpus item equally likely (MNS's corpus negatives): gives tail items negative gradient."""

    def probabilities(self, item_counts: np.ndarray) -> np.ndarray:
        return np.full(len(item_counts), 1.0 / len(item_counts))


@register("unigram")
class UnigramNegativeSampler(NegativeSampler):
    """Items drawn proportionally to ``(count + 1) ** power`` (power 0.75 as in word2vec)."""

    def __init__(self, num_negatives: int = 256, power: float = 0.75):
        super().__init__(num_negatives)
        self.power = power

    def probabilities(self, item_counts: np.ndarray) -> np.ndarray:
        w = (np.asarray(item_counts, dtype=np.float64) + 1.0) ** self.power
        return w / w.sum()
