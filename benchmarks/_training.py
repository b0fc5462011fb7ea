"""Timing a few training steps of a config, for the speed benchmarks (no validation, logging or checkpoints)."""

from __future__ import annotations

import time

import lightning.pytorch as pl


class BatchTimer(pl.Callback):
    """Seconds of every training batch (forward, backward, optimiser step; the batch is already built) on
    ``clock``: wall time (``time.perf_counter``, default) or this process's CPU time (``time.process_time``: on
    a machine shared with other work, what the batch cost this process rather than how long it waited)."""

    def __init__(self, clock=time.perf_counter):
        self.seconds: list[float] = []
        self._end = None
        self.clock = clock

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = self.clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = self.clock()
        self.seconds.append(now - self._start)
        self.between = getattr(self, "between", []) + ([now - self._end] if self._end is not None else [])
        self._end = now


def build_from_config(config: str, overrides: list[str] | None = None):
    """``(model, datamodule)`` of a YAML config, exactly as ``lightning-retrieval fit --config`` builds them."""
    from lightning_retrieval.cli import RetrievalCLI, prepare_registry
    from lightning_retrieval.data import RetrievalDataModule
    from lightning_retrieval.tasks import RetrievalModel

    prepare_registry([])  # short component names (class_path: dcm) as the CLI knows them
    cli = RetrievalCLI(
        RetrievalModel,
        RetrievalDataModule,
        subclass_mode_model=True,
        run=False,
        args=["--config", config, *(overrides or [])],
    )
    return cli.model, cli.datamodule


def time_training(model, datamodule, batches: int, accelerator: str = "cpu", clock=time.perf_counter) -> dict:
    """Train ``batches`` batches after one warm-up batch; median seconds per step and per batch end-to-end
    (including building the next batch) on ``clock`` (see ``BatchTimer``), and batches per epoch."""
    timer = BatchTimer(clock)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=batches + 1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        accelerator=accelerator,
        devices=1,
    )
    trainer.fit(model, datamodule=datamodule)
    steps = sorted(timer.seconds[1:])
    between = sorted(getattr(timer, "between", [])[1:] or steps)
    return {
        "step_seconds_median": steps[len(steps) // 2],
        "batch_seconds_median": between[len(between) // 2],  # end-to-end, input pipeline included
        "batches_per_epoch": len(datamodule.train_dataloader()),
        "batch_size": datamodule.batch_size,
    }
