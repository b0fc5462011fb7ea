"""Training speed: seconds per training epoch and examples per second, logged like any metric."""

from __future__ import annotations

import time

from lightning_retrieval.callbacks.base import RetrievalCallback
from lightning_retrieval.registry import register


@register("training_speed")
class TrainingSpeed(RetrievalCallback):
    """Logs ``train/epoch_seconds`` (training batches only, evaluation excluded) and ``train/examples_per_second``."""

    def on_train_epoch_start(self, trainer, pl_module):
        self._start, self._examples, self._eval_seconds = time.perf_counter(), 0, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._examples += int(batch["user"].shape[0])

    def on_validation_start(self, trainer, pl_module):
        self._eval_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        if hasattr(self, "_start"):
            self._eval_seconds += time.perf_counter() - self._eval_start

    def on_train_epoch_end(self, trainer, pl_module):
        seconds = time.perf_counter() - self._start - self._eval_seconds
        pl_module.log("train/epoch_seconds", seconds)
        pl_module.log("train/examples_per_second", self._examples / max(seconds, 1e-9))
