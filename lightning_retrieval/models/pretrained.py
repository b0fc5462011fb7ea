"""Pre-trained ID embeddings: the file format, the export and the loader (frozen + dropout by default).

File (``torch.save`` of a dict, format ``lightning-retrieval/pretrained-ids/v1``)::

    format: str, embedding_dim: int,
    user_ids: list (original ids), user_table: FloatTensor [U, D],
    item_ids: list (original ids), item_table: FloatTensor [N, D],
    window: [start, end) timestamps of the interactions the tables were trained on.

Pinterest froze their pre-trained ID tables and put dropout 0.5 on top (fine-tuning overfit), and found
that a table whose training window overlaps the model's training window hurts: the loader refuses such a
table unless ``allow_window_overlap`` is set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lightning_retrieval.checkpoints import safe_torch_load
from lightning_retrieval.errors import CheckpointError

FORMAT = "lightning-retrieval/pretrained-ids/v1"


def save_pretrained_ids(path, user_ids, user_table, item_ids, item_table, window) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": FORMAT,
            "embedding_dim": int(user_table.shape[1]),
            "user_ids": list(np.asarray(user_ids).tolist()),
            "user_table": user_table.detach().cpu().float(),
            "item_ids": list(np.asarray(item_ids).tolist()),
            "item_table": item_table.detach().cpu().float(),
            "window": [float(window[0]), float(window[1])],
        },
        path,
    )
    return path


def load_pretrained_ids(path) -> dict:
    """Read a pre-trained ID file with ``torch.load(weights_only=True)``: tensors, lists, numbers and strings
    only, so a crafted file cannot run code; anything else is refused with :class:`CheckpointError`."""
    blob = safe_torch_load(path, what="pre-trained ID file")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pre-trained ID file of format {FORMAT!r}")
    keys = ("embedding_dim", "user_ids", "user_table", "item_ids", "item_table", "window")
    missing = [k for k in keys if k not in blob]
    if missing:
        raise CheckpointError(f"pre-trained ID file {path} lacks the entries {missing}")
    for name in ("user_table", "item_table"):
        table, ids = blob[name], blob[name.replace("_table", "_ids")]
        if not isinstance(table, torch.Tensor) or table.ndim != 2 or len(table) != len(ids):
            raise CheckpointError(f"pre-trained ID file {path}: {name} must be a [len(ids), D] tensor")
    return blob


class PretrainedIds:
    """Where to load user/item ID tables from and how to use them.

    Args:
        path: a file written by the ``id_pretrain`` task (``PretrainedIdExport`` callback).
        freeze: keep the tables fixed (default) or fine-tune them.
        dropout: dropout on the pooled ID embeddings (default 0.5, as Pinterest).
        allow_window_overlap: load even if the table's training window overlaps the model's.
    """

    def __init__(self, path: str, freeze: bool = True, dropout: float = 0.5, allow_window_overlap: bool = False):
        self.path, self.freeze, self.dropout, self.allow_window_overlap = path, freeze, dropout, allow_window_overlap

    def apply(self, embeddings, user_ids: np.ndarray, item_ids: np.ndarray, model_window: tuple[float, float]) -> dict:
        """Copy the pre-trained rows into ``embeddings`` (an ``IdEmbeddings``); returns a report.

        Rows are matched by original id; ids the file does not know keep their initialisation (counted).
        """
        blob = load_pretrained_ids(self.path)
        start, end = blob["window"]
        if start < model_window[1] and model_window[0] < end and not self.allow_window_overlap:
            raise ValueError(
                f"pre-trained ID tables in {self.path} were trained on [{start:.0f}, {end:.0f}), which overlaps the "
                f"model's training window [{model_window[0]:.0f}, {model_window[1]:.0f}); use a table trained "
                "before the model's window, or set allow_window_overlap: true"
            )
        if blob["embedding_dim"] != embeddings.embedding_dim:
            raise ValueError(
                f"pre-trained width {blob['embedding_dim']} != model embedding_dim {embeddings.embedding_dim}"
            )
        report = {}
        for name, ours, theirs, table in (
            ("user_id", user_ids, blob["user_ids"], blob["user_table"]),
            ("item_id", item_ids, blob["item_ids"], blob["item_table"]),
        ):
            rows = pd.Index(theirs).get_indexer(ours)
            found = rows >= 0
            weight = embeddings.table(name)
            with torch.no_grad():
                weight[torch.from_numpy(np.flatnonzero(found))] = table[torch.from_numpy(rows[found])].to(weight)
            weight.requires_grad_(not self.freeze)
            report[f"{name}_loaded"], report[f"{name}_missing"] = int(found.sum()), int((~found).sum())
        embeddings.dropout.p = self.dropout
        report.update(frozen=self.freeze, dropout=self.dropout, window=[start, end])
        return report
