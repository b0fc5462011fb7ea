"""Shared plumbing for callbacks that search the corpus with the model's user vectors."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from lightning_retrieval.registry import component_kind


@component_kind("callbacks")
class RetrievalCallback(pl.Callback):
    """Collects user vectors from evaluation steps and embeds the corpus with the item tower."""

    def __init__(self):
        self._rows: list[torch.Tensor] = []
        self._vectors: list[torch.Tensor] = []

    def _reset(self) -> None:
        self._rows, self._vectors = [], []

    def _collect(self, outputs) -> None:
        if not isinstance(outputs, dict) or "user_embeddings" not in outputs:
            raise TypeError("evaluation steps must return {'user_embeddings': [B, D], 'eval_row': [B]}")
        self._rows.append(outputs["eval_row"].detach())
        self._vectors.append(outputs["user_embeddings"].detach().float())

    def _gathered(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[np.ndarray, np.ndarray]:
        """``(rows [U], vectors [U, D])`` from all processes, de-duplicated by row (samplers may pad)."""
        if not self._rows:
            raise RuntimeError("no user vectors were collected: did the evaluation dataloader yield batches?")
        rows, vectors = torch.cat(self._rows), torch.cat(self._vectors)
        if trainer.world_size > 1:
            rows = pl_module.all_gather(rows).reshape(-1)
            vectors = pl_module.all_gather(vectors).reshape(-1, vectors.shape[-1])
        rows_np = rows.cpu().numpy()
        uniq, first = np.unique(rows_np, return_index=True)
        return uniq, vectors.cpu().numpy()[first]

    @staticmethod
    @torch.no_grad()
    def corpus_vectors(trainer: pl.Trainer, pl_module, stage: str, batch_size: int = 8192) -> np.ndarray:
        """Item-tower vectors of the whole corpus ``[N, D]`` (model in eval mode, no gradients)."""
        datamodule = trainer.datamodule
        was_training = pl_module.training
        pl_module.eval()
        chunks = []
        try:
            for batch in datamodule.corpus_batches(stage, batch_size):
                batch = {k: v.to(pl_module.device) for k, v in batch.items()}
                chunks.append(pl_module.embed_items(batch).float().cpu())
        finally:
            pl_module.train(was_training)
        return torch.cat(chunks).numpy()

    @staticmethod
    def run_dir(trainer: pl.Trainer) -> Path:
        path = Path(trainer.log_dir or trainer.default_root_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path
