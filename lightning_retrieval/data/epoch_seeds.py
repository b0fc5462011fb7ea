"""Randomness of a training epoch derived from ``(seed, epoch, ...)`` only, so a resumed run replays it.

Shuffling uses ``seed + epoch`` (as :class:`~torch.utils.data.DistributedSampler`); corpus negatives use one
generator per batch seeded by ``(seed, epoch, first position of the batch)``: independent of DataLoader
workers (no two workers share a stream) and of where a run was interrupted.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


def epoch_seed(seed: int, epoch: int, key: int) -> int:
    """A 63-bit seed mixed from ``(seed, epoch, key)`` (numpy's SeedSequence), distinct for distinct triples."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(key)]).generate_state(2, np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def batch_generator(seed: int, epoch: int, key: int) -> torch.Generator:
    """A fresh CPU generator for one batch of epoch ``epoch``."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch, key))


def stream_generator(batch_key: torch.Tensor, stream: int) -> torch.Generator:
    """A CPU generator for one more random stream of a training batch (e.g. the model's condition draws).

    ``batch_key [3]`` is the batch's ``(seed, epoch, first position)`` (``batch["batch_key"]``); ``stream`` tells
    apart the streams drawn for the same batch. Follows the data seed (hence ``--seed_everything``) and replays on
    resume like the corpus negatives.
    """
    seed, epoch, position = (int(v) for v in batch_key.tolist())
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, position, int(stream) & 0xFFFFFFFF]).generate_state(
        2, np.uint32
    )
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


class EpochSampler(DistributedSampler):
    """The training order of epoch ``e``: a permutation seeded by ``seed + e`` (or the input order without
    ``shuffle``), sharded over ``num_replicas`` ranks; ``set_epoch`` (Lightning calls it at every epoch start,
    also after resuming) is passed on to the dataset so its per-batch randomness follows the epoch too.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
