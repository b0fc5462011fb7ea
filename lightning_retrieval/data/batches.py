"""Batch construction by vectorised gathers; datasets return whole batches via ``__getitems__``.

Batch keys (``B`` examples, ``L`` = max history, ``M`` corpus negatives):
    user [B], history [B, L], history_mask [B, L] (right-aligned: most recent last), history_length [B] (all
    earlier interactions, not only the last L), history_topic_counts [B, T], user_dense [B, Fu], optional
    followed_topics [B, T] (multi-hot, when the users table has a followed-topics column), side features
    user_feature_<name> / user_feature_<name>_lengths (flattened bags; item_feature_<name>, neg_item_feature_<name>),
    item [B], item_topics / item_topic_lengths (flattened bags), item_dense [B, Fi], item_log_q [B], optional
    history_item [H] (+ history_item_ features: the H unique valid history items) and history_item_index [valid
    history positions] (each valid position's row in history_item, in ``history[history_mask]`` order),
    optional neg_item [M] (+ neg_ features) and neg_log_q [M], batch_key [3] = (seed, epoch, first position) for
    training batches (seeds the model's own random draws: ``epoch_seeds.stream_generator``), eval_row [B] for
    evaluation batches.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lightning_retrieval.data.epoch_seeds import batch_generator
from lightning_retrieval.data.features import SideFeatureBags, SideFeatures
from lightning_retrieval.data.negatives import NegativeSampler
from lightning_retrieval.data.preparation import EvaluationSet, PreparedData

DENSE_TOPIC_TABLE_MAX = 2**24  # floats of the [items, topics] count table behind history_topic_counts (64 MiB)


class BatchBuilder:
    """Turns interaction / user / item indices into model-ready tensors."""

    def __init__(
        self,
        data: PreparedData,
        max_history: int,
        item_counts: np.ndarray,
        side_features: SideFeatures | None = None,
        history_item_features: bool = False,
    ):
        if max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {max_history}")
        self.max_history = max_history
        self.history_item_features = history_item_features
        self.user_offsets = torch.from_numpy(data.user_offsets)
        self.inter_user = torch.from_numpy(data.user)
        self.inter_item = torch.from_numpy(data.item)
        self.topic_offsets = torch.from_numpy(data.item_topics.offsets)
        self.topic_values = torch.from_numpy(data.item_topics.values)
        self.item_dense = torch.from_numpy(data.item_dense)
        self.user_dense = torch.from_numpy(data.user_dense)
        self.item_counts = item_counts
        self.num_topics = data.num_topics
        self.item_topic_table = self._item_topic_table(data)
        side_features = side_features if side_features is not None else SideFeatures()
        self.user_side, self.item_side = SideFeatureBags(side_features.users), SideFeatureBags(side_features.items)
        followed = np.zeros((data.num_users, data.num_topics), dtype=np.float32)
        followed[data.user_topics.row_ids(), data.user_topics.values] = 1.0
        self.followed = torch.from_numpy(followed) if data.user_topics.values.size else None
        total = max(int(item_counts.sum()), 1)
        # log of the in-batch sampling probability (data distribution); unseen items get half a count
        self.item_log_q = torch.from_numpy(np.log(np.maximum(item_counts, 0.5) / total)).float()

    def history(self, users: torch.Tensor, cutoff: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to L items each user interacted with before interaction ``cutoff``: ``[B, L]`` ids and mask."""
        positions = cutoff[:, None] - self.max_history + torch.arange(self.max_history)
        mask = positions >= self.user_offsets[users][:, None]
        items = torch.where(mask, self.inter_item[positions.clamp(min=0)], torch.zeros((), dtype=torch.long))
        return items, mask

    def topics_of(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flattened topics of ``items`` and how many each has: ``(values [nnz], lengths [len(items)])``."""
        starts = self.topic_offsets[items]
        lengths = self.topic_offsets[items + 1] - starts
        gather = torch.repeat_interleave(starts - torch.cumsum(lengths, 0) + lengths, lengths)
        return self.topic_values[gather + torch.arange(int(lengths.sum()))], lengths

    def item_features(self, items: torch.Tensor, prefix: str = "item") -> dict[str, torch.Tensor]:
        topics, lengths = self.topics_of(items)
        return {
            prefix: items,
            f"{prefix}_topics": topics,
            f"{prefix}_topic_lengths": lengths,
            f"{prefix}_dense": self.item_dense[items],
            **self.item_side(items, prefix),
        }

    def user_features(self, users: torch.Tensor, cutoff: torch.Tensor) -> dict[str, torch.Tensor]:
        history, mask = self.history(users, cutoff)
        return {
            "user": users,
            "history": history,
            "history_mask": mask,
            "history_length": cutoff - self.user_offsets[users],  # full length, before the max_history window
            "history_topic_counts": self.topic_counts(history, mask),
            "user_dense": self.user_dense[users],
            **({"followed_topics": self.followed[users]} if self.followed is not None else {}),
            **self.user_side(users, "user"),
            **(self.history_items(history, mask) if self.history_item_features else {}),
        }

    def history_items(self, history: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Item features of the unique valid history items (prefix ``history_item``) and ``history_item_index``:
        the row of each valid position (``history[mask]`` order) among them."""
        unique, index = torch.unique(history[mask], return_inverse=True)
        return {**self.item_features(unique, "history_item"), "history_item_index": index}

    @staticmethod
    def _item_topic_table(data: PreparedData) -> torch.Tensor | None:
        """``[items, T]`` how often each topic is listed for each item, when it fits ``DENSE_TOPIC_TABLE_MAX``."""
        topics = data.item_topics
        if data.num_topics == 0 or topics.num_rows * data.num_topics > DENSE_TOPIC_TABLE_MAX:
            return None
        table = np.zeros((topics.num_rows, data.num_topics), dtype=np.float32)
        np.add.at(table, (topics.row_ids(), topics.values), 1.0)
        return torch.from_numpy(table)

    def topic_counts(self, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` how often each topic occurs among the (windowed) history items.

        With the dense item-topic table: one weighted ``embedding_bag`` sum over the ``[B, L]`` history (padding
        weighs 0; small integer counts, exact in float32); otherwise a scatter of the flattened topic lists."""
        if self.item_topic_table is not None:
            weights = mask.to(self.item_topic_table.dtype)
            return F.embedding_bag(history, self.item_topic_table, mode="sum", per_sample_weights=weights)
        rows = torch.arange(history.shape[0]).repeat_interleave(mask.sum(1))
        topics, lengths = self.topics_of(history[mask])
        counts = torch.zeros(history.shape[0], self.num_topics)
        counts.index_put_((rows.repeat_interleave(lengths), topics), torch.ones(len(topics)), accumulate=True)
        return counts


class TrainingExamples(Dataset):
    """(history before t, user features) -> item at t, for every training interaction."""

    def __init__(self, builder: BatchBuilder, indices: np.ndarray, sampler: NegativeSampler | None, seed: int):
        self.builder = builder
        self.indices = torch.from_numpy(indices)
        self.sampler = sampler
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Negatives of epoch ``epoch``: each batch draws from ``batch_generator(seed, epoch, first position)``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        idx = self.indices[torch.as_tensor(positions)]
        users = self.builder.inter_user[idx]
        targets = self.builder.inter_item[idx]
        batch = self.builder.user_features(users, idx)
        batch.update(self.builder.item_features(targets))
        batch["item_log_q"] = self.builder.item_log_q[targets]
        batch["batch_key"] = torch.tensor([self.seed, self.epoch, positions[0]], dtype=torch.long)
        if self.sampler is not None:
            generator = batch_generator(self.seed, self.epoch, positions[0])
            neg, neg_log_q = self.sampler.sample(self.builder.item_counts, generator)
            batch.update(self.builder.item_features(neg, prefix="neg_item"))
            batch["neg_log_q"] = neg_log_q
        return batch


class EvaluationUsers(Dataset):
    """One row per evaluated user: their features at the cutoff and their first target (for the loss)."""

    def __init__(self, builder: BatchBuilder, eval_set: EvaluationSet):
        self.builder = builder
        self.eval_set = eval_set
        self.users = torch.from_numpy(eval_set.users)
        self.cutoff = torch.from_numpy(eval_set.cutoff)
        self.has_targets = eval_set.targets.values.size > 0

    def __len__(self) -> int:
        return len(self.users)

    def __getitems__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(positions, dtype=torch.long)
        batch = self.builder.user_features(self.users[rows], self.cutoff[rows])
        batch["eval_row"] = rows
        if self.has_targets:
            first_target = self.builder.inter_item[self.cutoff[rows]]
            batch.update(self.builder.item_features(first_target))
            batch["item_log_q"] = self.builder.item_log_q[first_target]
        return batch


def collate_batch(batch):
    """Datasets above already return whole batches; the DataLoader's collate step is the identity."""
    return batch
