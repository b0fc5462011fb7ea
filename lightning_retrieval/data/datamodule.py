"""LightningDataModule over any :class:`InteractionSource`."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from jsonargparse import lazy_instance
from lightning.pytorch.strategies import ParallelStrategy
from torch.utils.data import DataLoader, DistributedSampler

from lightning_retrieval.data.batches import BatchBuilder, EvaluationUsers, TrainingExamples, collate_batch
from lightning_retrieval.data.negatives import NegativeSampler
from lightning_retrieval.data.preparation import (
    STAGE_CODES,
    TEST,
    TRAIN,
    EvaluationSet,
    PreparedData,
    evaluation_set,
    prepare,
    serving_set,
)
from lightning_retrieval.data.sources import InteractionSource, MovieLensSource


class RetrievalDataModule(pl.LightningDataModule):
    """Temporal-split retrieval data: training examples, evaluation users and the item corpus.

    Args:
        source: where the raw tables come from (registry ``datasets``: ``movielens``, ``interactions_file``).
        split: ``leave_last_out`` (per user) or ``global_time`` (one cut for all users).
        val_items / test_items: interactions per user held out (leave_last_out).
        val_time / test_time: cut points for global_time, quantiles in (0, 1) or absolute timestamps.
        min_rating: implicit-feedback threshold; interactions below it are removed (and counted).
        train_window: ``[start, end)`` of the training examples (targets), as quantiles of the timestamps in
            [0, 1] or absolute timestamps; histories may still reach back before ``start``. Default: all.
        max_history: most recent items of the history fed to the user tower.
        batch_size: training batch size; eval_batch_size: users per evaluation batch.
        negative_sampler: optional corpus negatives for mixed negative sampling (``uniform``, ``unigram``).
        exclude_seen: remove each user's history items from their retrieved lists.
        seed: seeds shuffling and negative sampling.
        shuffle: shuffle training examples (off: a fixed order, e.g. to compare 1 and N processes batch by batch).
    """

    def __init__(
        self,
        source: InteractionSource = lazy_instance(MovieLensSource),
        split: Literal["leave_last_out", "global_time"] = "leave_last_out",
        val_items: int = 1,
        test_items: int = 1,
        val_time: float = 0.8,
        test_time: float = 0.9,
        min_rating: float | None = None,
        train_window: list[float] | None = None,
        max_history: int = 50,
        batch_size: int = 512,
        eval_batch_size: int = 1024,
        negative_sampler: NegativeSampler | None = None,
        exclude_seen: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        shuffle: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["source", "negative_sampler"])
        self.source = source
        self.split = split
        self.val_items, self.test_items = val_items, test_items
        self.val_time, self.test_time = val_time, test_time
        self.min_rating = min_rating
        if train_window is not None and len(train_window) != 2:
            raise ValueError(f"train_window must be [start, end], got {train_window}")
        self.train_window = train_window
        self.max_history = max_history
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.negative_sampler = negative_sampler
        self.exclude_seen = exclude_seen
        self.seed = seed
        self.num_workers = num_workers
        self.shuffle = shuffle
        self._eval_sets: dict[str, EvaluationSet] = {}

    # ---- prepared data (lazy: the CLI links feature_spec into the model at instantiation) ----
    @cached_property
    def data(self) -> PreparedData:
        return prepare(
            self.source.load(),
            split=self.split,
            val_items=self.val_items,
            test_items=self.test_items,
            val_time=self.val_time,
            test_time=self.test_time,
            min_rating=self.min_rating,
        )

    @property
    def feature_spec(self) -> dict:
        """Sizes the model needs to build its tables and layers."""
        d = self.data
        return {
            "num_users": d.num_users,
            "num_items": d.num_items,
            "num_topics": d.num_topics,
            "user_dense_dim": int(d.user_dense.shape[1]),
            "item_dense_dim": int(d.item_dense.shape[1]),
        }

    def setup(self, stage: str | None = None) -> None:
        self.data  # noqa: B018 - prepare once

    @cached_property
    def _train_builder(self) -> BatchBuilder:
        return BatchBuilder(self.data, self.max_history, self.data.item_counts(before_split=TRAIN + 1))

    def builder_for(self, stage: str) -> BatchBuilder:
        """Builder whose item counts use only interactions visible before ``stage`` (no leakage)."""
        if stage in ("fit", "train"):
            return self._train_builder
        return self._builders[stage]

    @cached_property
    def _builders(self) -> dict[str, BatchBuilder]:
        d = self.data
        return {
            "val": BatchBuilder(d, self.max_history, d.item_counts(before_split=STAGE_CODES["val"])),
            "test": BatchBuilder(d, self.max_history, d.item_counts(before_split=TEST)),
            "predict": BatchBuilder(d, self.max_history, d.item_counts(before_split=TEST + 1)),
        }

    def evaluation_set(self, stage: str) -> EvaluationSet:
        """Evaluated users, their cutoffs, targets and excluded items for 'val', 'test' or 'predict'."""
        if stage not in self._eval_sets:
            if stage == "predict":
                self._eval_sets[stage] = serving_set(self.data)
            else:
                self._eval_sets[stage] = evaluation_set(self.data, stage, exclude_seen=self.exclude_seen)
        return self._eval_sets[stage]

    # ---- loaders ----
    @cached_property
    def training_window(self) -> tuple[float, float]:
        """``(start, end)`` timestamps of the training examples (the configured window, else their span)."""
        ts = self.data.timestamp[self.data.train_indices()]
        if self.train_window is None:
            return float(ts.min()), float(np.nextafter(ts.max(), np.inf))
        bounds = []
        for value in self.train_window:
            is_quantile = 0.0 <= value <= 1.0
            bounds.append(float(np.quantile(self.data.timestamp, value)) if is_quantile else float(value))
        if self.train_window[1] == 1.0:
            bounds[1] = float(np.nextafter(self.data.timestamp.max(), np.inf))
        if bounds[0] >= bounds[1]:
            raise ValueError(f"train_window {self.train_window} is empty ({bounds[0]} >= {bounds[1]})")
        return bounds[0], bounds[1]

    def training_indices(self):
        """Training interactions whose timestamp lies in the training window."""
        idx = self.data.train_indices()
        start, end = self.training_window
        ts = self.data.timestamp[idx]
        idx = idx[(ts >= start) & (ts < end)]
        if len(idx) == 0:
            raise ValueError(f"no training interaction in the train_window {self.train_window}")
        return idx

    def train_dataloader(self) -> DataLoader:
        ds = TrainingExamples(self._train_builder, self.training_indices(), self.negative_sampler, self.seed)
        distributed = self.trainer is not None and isinstance(self.trainer.strategy, ParallelStrategy)
        if distributed:  # our own sampler (Lightning keeps it): shards in our order, so N ranks x B = 1 rank x N*B
            sampler = DistributedSampler(
                ds,
                num_replicas=self.trainer.world_size,
                rank=self.trainer.global_rank,
                shuffle=self.shuffle,
                seed=self.seed,
                drop_last=True,
            )
            return DataLoader(
                ds,
                batch_size=self.batch_size,
                sampler=sampler,
                collate_fn=collate_batch,
                num_workers=self.num_workers,
                drop_last=True,
            )
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            generator=torch.Generator().manual_seed(self.seed),
            collate_fn=collate_batch,
            num_workers=self.num_workers,
            drop_last=len(ds) > self.batch_size,
        )

    def _users_loader(self, stage: str) -> DataLoader:
        ds = EvaluationUsers(self.builder_for(stage), self.evaluation_set(stage))
        return DataLoader(
            ds, batch_size=self.eval_batch_size, shuffle=False, collate_fn=collate_batch, num_workers=self.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        return self._users_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._users_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._users_loader("predict")

    def corpus_batches(self, stage: str, batch_size: int = 8192) -> Iterator[dict[str, torch.Tensor]]:
        """Item features of the whole corpus in id order, plus ``item_count`` visible before ``stage``."""
        builder = self.builder_for(stage)
        counts = torch.from_numpy(builder.item_counts).float()
        for start in range(0, self.data.num_items, batch_size):
            ids = torch.arange(start, min(start + batch_size, self.data.num_items))
            batch = builder.item_features(ids)
            batch["item_count"] = counts[ids]
            yield batch

    def item_topics(self):
        return self.data.item_topics

    def describe(self) -> dict:
        return {"source": self.source.describe(), **self.data.report}
