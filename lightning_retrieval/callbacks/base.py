"""Shared plumbing for callbacks that search the corpus with the model's user vectors."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from lightning_retrieval.registry import component_kind


@contextmanager
def evaluation_mode(pl_module):
    """Eval mode and no gradients for work done outside Lightning's loops; restores the previous mode."""
    was_training = pl_module.training
    pl_module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        pl_module.train(was_training)


@component_kind("callbacks")
class RetrievalCallback(pl.Callback):
    """Collects user vectors from evaluation steps and embeds the corpus with the item tower."""

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self._outputs: dict[str, list[torch.Tensor]] = {}

    def _collect(self, outputs) -> None:
        if not isinstance(outputs, dict) or "user_embeddings" not in outputs:
            raise TypeError(
                "evaluation steps must return {'user_embeddings': [B, K, D], 'user_valid': [B, K], 'eval_row': [B]} "
                "(RetrievalModel._user_outputs of a UserQueries)"
            )
        for key, value in outputs.items():
            value = value.detach()
            self._outputs.setdefault(key, []).append(value.float() if key == "user_embeddings" else value)

    def _gathered(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, np.ndarray]:
        """Collected outputs from all processes, ordered and de-duplicated by ``eval_row`` (samplers may pad).

        Keys: ``eval_row [U]``, ``user_embeddings [U, K, D]``, ``user_valid [U, K]``, optional ``query_weights [U, K]``
        and whatever else the step returned (``history_length [U]``).
        """
        if not self._outputs:
            raise RuntimeError("no user vectors were collected: did the evaluation dataloader yield batches?")
        merged = {k: torch.cat(v) for k, v in self._outputs.items()}
        if trainer.world_size > 1:
            merged = {k: pl_module.all_gather(v).flatten(0, 1) for k, v in merged.items()}
        merged = {k: v.cpu().numpy() for k, v in merged.items()}
        rows, first = np.unique(merged["eval_row"], return_index=True)
        return {k: v[first] for k, v in merged.items()}

    @staticmethod
    def corpus_vectors(trainer: pl.Trainer, pl_module, stage: str, batch_size: int = 8192) -> np.ndarray:
        """Item-tower vectors of the whole corpus ``[N, D]`` (model in eval mode, no gradients)."""
        with evaluation_mode(pl_module):
            chunks = [
                pl_module.embed_items({k: v.to(pl_module.device) for k, v in batch.items()}).float().cpu()
                for batch in trainer.datamodule.corpus_batches(stage, batch_size)
            ]
        return torch.cat(chunks).numpy()

    @staticmethod
    def run_dir(trainer: pl.Trainer) -> Path:
        """The run's log folder. Call it on every process: ``trainer.log_dir`` broadcasts under DDP."""
        path = Path(trainer.log_dir or trainer.default_root_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path
