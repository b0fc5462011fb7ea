"""Export of a model's user and item ID tables after ``fit`` (input of ``pretrained_ids`` in later models)."""

from __future__ import annotations

from lightning_retrieval.callbacks.base import RetrievalCallback
from lightning_retrieval.models.embeddings import IdEmbeddings
from lightning_retrieval.models.pretrained import save_pretrained_ids
from lightning_retrieval.registry import register


@register("pretrained_id_export")
class PretrainedIdExport(RetrievalCallback):
    """Writes the model's user and item ID tables, the id mapping and the training window at the end of ``fit``.

    Args:
        path: output file (see ``lightning_retrieval.models.pretrained`` for the format).
    """

    def __init__(self, path: str = "runs/pretrained/ids.pt"):
        super().__init__()
        self.path = path

    def on_train_end(self, trainer, pl_module):
        state = trainer.strategy.lightning_module_state_dict()  # every process: sharded tables are gathered
        if trainer.is_global_zero:
            dm = trainer.datamodule

            def key(table: str) -> str:
                return "embeddings." + IdEmbeddings.state_key(table)

            save_pretrained_ids(
                self.path,
                dm.user_ids,
                state[key("user_id")],
                dm.item_ids,
                state[key("item_id")],
                dm.training_window,
            )
