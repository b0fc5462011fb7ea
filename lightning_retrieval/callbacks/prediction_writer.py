"""``predict``: top-k unseen items per user, written to Parquet or CSV with original ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from lightning.pytorch.utilities import rank_zero_warn

from lightning_retrieval.callbacks.base import RetrievalCallback
from lightning_retrieval.data.preparation import take_rows
from lightning_retrieval.registry import register
from lightning_retrieval.retrieval.evaluator import RetrievalEvaluator
from lightning_retrieval.retrieval.index import IndexBackend, default_exact_index
from lightning_retrieval.retrieval.merging import ResultMerger, RoundRobinMerger


@register("topk_prediction_writer")
class TopKPredictionWriter(RetrievalCallback):
    """Writes ``user_id, rank, item_id, score`` rows (original ids) for every user's top ``k``.

    Users are embedded with their full history; items they already interacted with are excluded.

    Args:
        output_path: ``.parquet`` or ``.csv`` file.
        k: items per user.
        index: index backend (None: ``exact_torch`` on CPU, FAISS ``exact`` on a faiss-gpu host).
        merger: merges the per-query lists of models with several queries per user (``round_robin``, ``score``).
    """

    def __init__(
        self,
        output_path: str = "predictions.parquet",
        k: int = 100,
        index: IndexBackend | None = None,
        merger: ResultMerger | None = None,
        batch_size: int = 1024,
    ):
        super().__init__()
        suffix = Path(output_path).suffix.lower()
        if suffix not in (".parquet", ".csv"):
            raise ValueError(f"output_path must end in .parquet or .csv, got {output_path!r}")
        self.output_path = Path(output_path)
        self.k = k
        self.index = index if index is not None else default_exact_index()
        self.merger = merger if merger is not None else RoundRobinMerger()
        self.evaluator = RetrievalEvaluator([k], metrics=[], batch_size=batch_size)

    def on_predict_epoch_start(self, trainer, pl_module):
        self._reset()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._collect(outputs)

    def on_predict_epoch_end(self, trainer, pl_module):
        datamodule = trainer.datamodule
        serving = datamodule.evaluation_set("predict")
        out = self._gathered(trainer, pl_module)
        rows, user_vectors = out["eval_row"], out["user_embeddings"]
        exclude = serving.exclude if len(rows) == len(serving) else take_rows(serving.exclude, rows)
        self.index.build(self.corpus_vectors(trainer, pl_module, "predict"))
        # one search per valid query (K = 1: one per user), merged per user
        items, scores, valid = self.evaluator.retrieve_queries(
            self.index, user_vectors, out["user_valid"], exclude, self.k, self.merger, out.get("query_weights")
        )
        users = np.repeat(serving.users[rows], self.k)
        frame = pd.DataFrame(
            {
                "user_id": datamodule.user_ids[users],
                "rank": np.tile(np.arange(1, self.k + 1), len(rows)),
                "item_id": datamodule.item_ids[np.maximum(items.reshape(-1), 0)],
                "score": scores.reshape(-1),
            }
        )
        if not valid.all():  # masked (zero-vector) users retrieved nothing: say so, don't write padding
            rank_zero_warn(f"{int((~valid).sum())} user(s) have an all-zero embedding and get no predictions")
            frame = frame[np.repeat(valid, self.k)]
        if trainer.is_global_zero:
            self.output_path.parent.mkdir(parents=True, exist_ok=True)
            if self.output_path.suffix.lower() == ".parquet":
                frame.to_parquet(self.output_path, index=False)
            else:
                frame.to_csv(self.output_path, index=False)
        self._reset()
