"""LightningDataModule over any :class:`InteractionSource`."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import replace
from functools import cached_property
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.strategies import ParallelStrategy
from torch.utils.data import DataLoader

from lightning_retrieval.data.batches import BatchBuilder, EvaluationUsers, TrainingExamples, collate_batch
from lightning_retrieval.data.epoch_seeds import EpochSampler
from lightning_retrieval.data.features import SideFeatures, prepare_side_features
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
from lightning_retrieval.data.schema import duplicate_rows, with_timestamps_in_seconds
from lightning_retrieval.data.sources import InteractionSource, MovieLensSource
from lightning_retrieval.errors import ConfigError
from lightning_retrieval.validation import non_negative_int, positive_int


class RetrievalDataModule(pl.LightningDataModule):
    """Temporal-split retrieval data: training examples, evaluation users and the item corpus.

    Args:
        source: where the raw tables come from (registry ``datasets``: ``movielens``, ``interactions_file``;
            None: the embedded MovieLens ml-latest-small).
        split: ``leave_last_out`` (per user), ``global_time`` (one cut for all users) or ``users`` (held-out users).
        val_items / test_items: interactions per user held out (leave_last_out).
        val_time / test_time: cut points for global_time, quantiles in (0, 1) or absolute timestamps.
        val_users / test_users / history_fraction: split ``users`` (ComiRec's protocol): shares of users held out
            (never trained on); the first ``history_fraction`` of a held-out user's interactions is history.
        min_rating: implicit-feedback threshold; interactions below it are removed (and counted).
        train_window: ``[start, end)`` of the training examples (targets), as quantiles of the timestamps in
            [0, 1] or absolute timestamps; histories may still reach back before ``start``. Default: all.
        max_history: most recent items of the history fed to the user tower.
        batch_size: training batch size; eval_batch_size: users per evaluation batch.
        negative_sampler: optional corpus negatives for mixed negative sampling (``uniform``, ``unigram``).
        exclude_seen: remove each user's history items from their retrieved lists.
        seed: seeds shuffling and negative sampling; default: the global seed (``seed_everything``), else 0.
        shuffle: shuffle training examples (off: a fixed order, e.g. to compare 1 and N processes batch by batch).
        duplicates: exact duplicate interaction rows (every column equal): ``keep`` (default) or ``drop``;
            either way their number is in the data report (``duplicate_rows``).
        history_item_features: also give every batch the item features of its history items (``history_item*``,
            unique items, and ``history_item_index``), so that a model can embed the history with its item tower
            (``interests`` queries with ``history_space: items``). Off by default (it costs a lookup per batch).
    """

    def __init__(
        self,
        source: InteractionSource | None = None,
        split: Literal["leave_last_out", "global_time", "users"] = "leave_last_out",
        val_items: int = 1,
        test_items: int = 1,
        val_time: float = 0.8,
        test_time: float = 0.9,
        val_users: float = 0.1,
        test_users: float = 0.1,
        history_fraction: float = 0.8,
        min_rating: float | None = None,
        train_window: list[float] | None = None,
        max_history: int = 50,
        batch_size: int = 512,
        eval_batch_size: int = 1024,
        negative_sampler: NegativeSampler | None = None,
        exclude_seen: bool = True,
        seed: int | None = None,
        num_workers: int = 0,
        shuffle: bool = True,
        duplicates: Literal["keep", "drop"] = "keep",
        history_item_features: bool = False,
    ):
        super().__init__()
        for name in ("max_history", "batch_size", "eval_batch_size"):
            positive_int(f"data.{name}", locals()[name])
        for name in ("val_items", "test_items", "num_workers"):
            non_negative_int(f"data.{name}", locals()[name])
        if duplicates not in ("keep", "drop"):
            raise ConfigError(f"data.duplicates must be 'keep' or 'drop', got {duplicates!r}")
        self.duplicates = duplicates
        self.save_hyperparameters(ignore=["source", "negative_sampler"])
        self.source = source if source is not None else MovieLensSource()
        self.split = split
        self.val_items, self.test_items = val_items, test_items
        self.val_time, self.test_time = val_time, test_time
        self.val_users, self.test_users, self.history_fraction = val_users, test_users, history_fraction
        self.min_rating = min_rating
        if train_window is not None and len(train_window) != 2:
            raise ValueError(f"train_window must be [start, end], got {train_window}")
        self.train_window = train_window
        self.max_history = max_history
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.negative_sampler = negative_sampler
        self.exclude_seen = exclude_seen
        self._seed = seed
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.history_item_features = history_item_features
        self._eval_sets: dict[str, EvaluationSet] = {}

    @property
    def seed(self) -> int:
        """``seed``, or the global seed when it is not set (so ``--seed_everything N`` reseeds the data too)."""
        return self._seed if self._seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))

    # ---- prepared data (lazy: the CLI links feature_spec into the model at instantiation) ----
    @cached_property
    def data(self) -> PreparedData:
        raw = with_timestamps_in_seconds(self.source.load())
        duplicated = duplicate_rows(raw.interactions)
        if self.duplicates == "drop" and duplicated.any():
            raw = replace(raw, interactions=raw.interactions[~duplicated])
        prepared = prepare(
            raw,
            split=self.split,
            val_items=self.val_items,
            test_items=self.test_items,
            val_time=self.val_time,
            test_time=self.test_time,
            min_rating=self.min_rating,
            val_users=self.val_users,
            test_users=self.test_users,
            history_fraction=self.history_fraction,
        )
        prepared.report["duplicate_rows"] = int(duplicated.sum())
        prepared.report["duplicate_rows_dropped"] = int(duplicated.sum()) if self.duplicates == "drop" else 0
        return prepared

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
            **(self.side_features.table_sizes() if self.side_features.users or self.side_features.items else {}),
        }

    @cached_property
    def side_features(self) -> SideFeatures:
        """The source's categorical / multi-valued side features, encoded for the prepared users and items
        (vocabularies from the users / items with a training interaction)."""
        return prepare_side_features(self.source.side_features(), self.data)

    def setup(self, stage: str | None = None) -> None:
        self.data  # noqa: B018 - prepare once

    @cached_property
    def _train_builder(self) -> BatchBuilder:
        counts = self.data.item_counts(before_split=TRAIN + 1)
        return BatchBuilder(self.data, self.max_history, counts, self.side_features, self.history_item_features)

    def builder_for(self, stage: str) -> BatchBuilder:
        """Builder whose item counts use only interactions visible before ``stage`` (no leakage)."""
        if stage in ("fit", "train"):
            return self._train_builder
        return self._builders[stage]

    @cached_property
    def _builders(self) -> dict[str, BatchBuilder]:
        d, side, hist = self.data, self.side_features, self.history_item_features
        return {
            "val": BatchBuilder(d, self.max_history, d.item_counts(before_split=STAGE_CODES["val"]), side, hist),
            "test": BatchBuilder(d, self.max_history, d.item_counts(before_split=TEST), side, hist),
            "predict": BatchBuilder(d, self.max_history, d.item_counts(before_split=TEST + 1), side, hist),
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
        self._restore_random_state()  # a resumed fit continues the saved random stream
        ds = TrainingExamples(self._train_builder, self.training_indices(), self.negative_sampler, self.seed)
        distributed = self.trainer is not None and isinstance(self.trainer.strategy, ParallelStrategy)
        # the order and negatives of epoch e depend on (seed, e) only (EpochSampler), so a resumed run replays them
        if distributed:  # our own sampler (Lightning keeps it): shards in our order, so N ranks x B = 1 rank x N*B
            sampler = EpochSampler(
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
            sampler=EpochSampler(ds, shuffle=self.shuffle, seed=self.seed),
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
        """Topics of every item (CSR over item indices; no values when the dataset has no topics)."""
        return self.data.item_topics

    # ---- public read-only view of the prepared data (for callbacks and tasks) ----
    @property
    def user_ids(self) -> np.ndarray:
        """``[num_users]`` original user id of each user index."""
        return self.data.user_ids

    @property
    def item_ids(self) -> np.ndarray:
        """``[num_items]`` original item id of each item index."""
        return self.data.item_ids

    @property
    def num_items(self) -> int:
        return self.data.num_items

    @property
    def num_topics(self) -> int:
        return self.data.num_topics

    @property
    def topic_names(self) -> np.ndarray:
        """``[num_topics]`` name of each topic index."""
        return self.data.topic_names

    def interactions_before(self, stage: str) -> tuple[np.ndarray, np.ndarray]:
        """``(item [M], timestamp [M])`` of the interactions visible before ``stage`` (``val``/``test``)."""
        visible = self.data.split < STAGE_CODES[stage]
        return self.data.item[visible], self.data.timestamp[visible]

    @property
    def item_signature(self) -> np.ndarray | None:
        """``[num_items]`` canonical signature per item (items table ``signature``), or None."""
        return self.data.item_signature

    def state_dict(self) -> dict:
        """Saved in checkpoints: the global random states (dropout, ...), restored on resume so that a resumed
        fit continues the random stream of the uninterrupted run."""
        _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [keys.tolist(), int(pos), int(has_gauss), float(cached_gaussian)],
            "python": list(random.getstate()[1]),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return {"random_state": state}

    def load_state_dict(self, state_dict: dict) -> None:
        """Keeps the saved random states for :meth:`train_dataloader`, which Lightning calls after the strategy's
        setup (sharding draws random numbers there) and right before the resumed epoch."""
        self._pending_random_state = state_dict.get("random_state")

    def _restore_random_state(self) -> None:
        state, self._pending_random_state = getattr(self, "_pending_random_state", None), None
        if not state:
            return
        torch.set_rng_state(state["torch"])
        keys, pos, has_gauss, cached_gaussian = state["numpy"]
        np.random.set_state(("MT19937", np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached_gaussian))
        random.setstate((3, tuple(state["python"]), None))
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])

    def user_segments(self, stage: str) -> dict[str, np.ndarray]:
        """Per-user attributes of ``stage``'s evaluated users, aligned to evaluation rows (``[E]`` each), from the
        source's :meth:`~InteractionSource.user_attributes` table (e.g. ``num_interests``); ``{}`` without one.
        Users missing from the table get NaN."""
        table = self.source.user_attributes()
        if table is None or len(table.columns) <= 1:
            return {}
        if "user_id" not in table.columns:
            columns = list(table.columns)
            raise ConfigError(f"{self.source.describe()}: user_attributes() needs a user_id column, got {columns}")
        users = self.data.user_ids[self.evaluation_set(stage).users]
        aligned = table.drop_duplicates("user_id").set_index("user_id").reindex(users)
        return {str(name): aligned[name].to_numpy() for name in aligned.columns}

    def describe(self) -> dict:
        side = self.side_features.report_lines()
        return {"source": self.source.describe(), **self.data.report, **({"side_features": side} if side else {})}
