"""FAISS evaluation at the end of every validation epoch and of ``test``."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from lightning_retrieval.callbacks.base import RetrievalCallback
from lightning_retrieval.callbacks.per_user import write_evaluation_per_user
from lightning_retrieval.callbacks.result_card import write_result_card
from lightning_retrieval.data.preparation import sorted_member, take_rows
from lightning_retrieval.errors import ConfigError
from lightning_retrieval.registry import register
from lightning_retrieval.retrieval.corpus import CorpusBuilder, SubsetIndex
from lightning_retrieval.retrieval.evaluator import DEFAULT_METRICS, RetrievalEvaluator
from lightning_retrieval.retrieval.index import IndexBackend, default_exact_index
from lightning_retrieval.retrieval.merging import ResultMerger, RoundRobinMerger
from lightning_retrieval.tracking.wandb_setup import log_evaluation_tables
from lightning_retrieval.validation import positive_int, positive_ints


def history_segments(history_length: np.ndarray, edges: list[int]) -> dict[str, np.ndarray]:
    """Boolean user masks per history-length bucket, e.g. edges [10, 50] -> history_1-9, _10-49, _50+."""
    bounds = [1, *edges, None]
    segments = {}
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        name = f"history_{lo}-{hi - 1}" if hi is not None else f"history_{lo}+"
        segments[name] = (history_length >= lo) & (history_length < hi if hi is not None else True)
    return segments


@register("retrieval_evaluation")
class RetrievalEvaluation(RetrievalCallback):
    """Embed the corpus, build the index, retrieve for every evaluated user, log metrics and the protocol.

    Metrics are logged as ``<stage>/<metric>@<k>`` (``val`` or ``test``) through ``LightningModule.log``,
    so every configured logger (CSV, TensorBoard, W&B) receives them; the protocol (split, k, index type,
    corpus size, excluded items, masked users) is logged as ``<stage>/protocol/*`` where numeric and written
    with the metrics into ``result_card_<stage>.{json,md}`` in the run directory.

    Args:
        ks: cut-offs.
        metrics: metric registry names. The default list includes ``interest_similarity`` (the collapse metric:
            mean pairwise cosine of a user's served queries), logged for multi-embedding models (K > 1) only.
        union_ks: cut-offs of the max-over-embeddings metrics (the KDD'25 DCM protocol), e.g. ``[100, 1000]``:
            ``union_hit_rate@k`` and ``union_recall@k``, where a target counts if ANY of the user's queries has it
            in its own top k (no merge). Opt-in (each query is searched to depth ``max(union_ks)``); empty: off.
        union_stages: the stages that compute the ``union_ks`` metrics (default ``test`` only: validation picks
            checkpoints by the merged metrics, and the deep per-query search would cost every epoch).
        index: index backend (None: ``exact_torch`` on CPU, FAISS ``exact`` on a faiss-gpu host; ``hnsw``, ``ivfpq``,
            ``faiss_factory``).
        merger: how multi-embedding models' per-embedding lists become one list (None: ``round_robin``;
            ``score``; ``weighted_budget``: shares in proportion to the query weights, e.g. DCM's routing mass).
        corpus: serving corpus builder (``time_decayed``): index only its items, built from the interactions
            visible before the evaluated period (default: every item).
        segment_edges: history-length bucket edges; metrics in ``segment_metrics`` are also reported per
            bucket as ``<stage>/<metric>@<k>/history_<lo>-<hi>`` (which users a model helps).
        batch_size: users per search batch (does not change results).
        corpus_batch_size: items per item-tower batch when embedding the corpus.
        result_card: write the result card files and the per-user metric file (``per_user_<stage>.parquet``).
    """

    def __init__(
        self,
        ks: list[int] = [10, 20, 50, 100],  # noqa: B006
        metrics: list[str] = list(DEFAULT_METRICS),  # noqa: B006
        index: IndexBackend | None = None,
        merger: ResultMerger | None = None,
        segment_edges: list[int] = [10, 50, 200],  # noqa: B006
        segment_metrics: list[str] = ["recall", "ndcg", "hit_rate"],  # noqa: B006
        corpus: CorpusBuilder | None = None,
        batch_size: int = 1024,
        corpus_batch_size: int = 8192,
        result_card: bool = True,
        union_ks: list[int] = [],  # noqa: B006
        union_stages: list[str] = ["test"],  # noqa: B006
    ):
        super().__init__()
        positive_ints("retrieval_evaluation.ks", ks)
        if union_ks:
            positive_ints("retrieval_evaluation.union_ks", union_ks)
        if set(union_stages) - {"val", "test"}:
            raise ConfigError(f"retrieval_evaluation.union_stages: choose from 'val' and 'test', got {union_stages}")
        positive_int("retrieval_evaluation.batch_size", batch_size)
        positive_int("retrieval_evaluation.corpus_batch_size", corpus_batch_size)
        self.evaluator = RetrievalEvaluator(ks, metrics, batch_size, union_ks)
        self.index = index if index is not None else default_exact_index()
        self.merger = merger if merger is not None else RoundRobinMerger()
        self.union_stages = tuple(union_stages)
        self.segment_edges = sorted(segment_edges)
        self.segment_metrics = tuple(segment_metrics)
        self.corpus = corpus
        self.corpus_batch_size = corpus_batch_size
        self.result_card = result_card
        self.last_result = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Fail before the first epoch if ``ks`` or the index cannot work on this corpus."""
        datamodule = getattr(trainer, "datamodule", None)
        if stage not in ("fit", "validate", "test") or datamodule is None or not hasattr(datamodule, "num_items"):
            return
        num_items, depth = datamodule.num_items, self.evaluator.depth
        name = "max(ks)" if depth == max(self.evaluator.ks) else "max(union_ks)"
        if depth > num_items:
            raise ConfigError(f"retrieval_evaluation: {name}={depth} is larger than the corpus ({num_items} items)")
        if self.corpus is not None:  # the serving corpus is built per evaluation; only the full size is known
            return
        self.index.check_corpus(num_items)
        eval_set = datamodule.evaluation_set("test" if stage == "test" else "val")
        most_seen = int(eval_set.exclude.lengths.max(initial=0))
        if num_items - most_seen < depth:
            raise ConfigError(
                f"retrieval_evaluation: {name}={depth} is larger than the corpus left after excluding seen items "
                f"for some user ({num_items} items, up to {most_seen} seen); lower ks or set data.exclude_seen: false"
            )

    def on_validation_epoch_start(self, trainer, pl_module):
        self._reset()

    def on_test_epoch_start(self, trainer, pl_module):
        self._reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._collect(outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._collect(outputs)

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._evaluate(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module):
        self._evaluate(trainer, pl_module, "test")

    def _build_index(self, datamodule, stage: str, item_vectors, targets):
        """The index over every item, or over the serving corpus when ``corpus`` is set."""
        if self.corpus is None:
            return self.index.build(item_vectors), {}
        items, timestamps = datamodule.interactions_before(stage)
        corpus_ids, _ = self.corpus.build(items, timestamps, datamodule.num_items, datamodule.item_signature)
        index = SubsetIndex(self.index, corpus_ids, datamodule.num_items).build(item_vectors[corpus_ids])
        outside = ~sorted_member(targets.values, np.sort(corpus_ids))
        return index, {
            "corpus": getattr(type(self.corpus), "registry_name", type(self.corpus).__name__),
            "targets_outside_corpus": int(outside.sum()),
        }

    def _evaluate(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        datamodule = trainer.datamodule
        eval_set = datamodule.evaluation_set(stage)
        out = self._gathered(trainer, pl_module)
        rows = out["eval_row"]
        targets, exclude = eval_set.targets, eval_set.exclude
        if len(rows) < len(eval_set):  # e.g. limit_val_batches: evaluate the users that were embedded
            targets, exclude = take_rows(targets, rows), take_rows(exclude, rows)
        item_vectors = self.corpus_vectors(trainer, pl_module, stage, self.corpus_batch_size)
        index, corpus_report = self._build_index(datamodule, stage, item_vectors, targets)
        result = self.evaluator.evaluate(
            index,
            out["user_embeddings"],
            targets,
            exclude,
            datamodule.item_topics(),
            item_vectors,
            user_valid=out.get("user_valid"),
            merger=self.merger,
            segments=history_segments(out["history_length"], self.segment_edges),
            segment_metrics=self.segment_metrics,
            query_weights=out.get("query_weights"),
            with_union=stage in self.union_stages,
        )
        result.protocol.update(corpus_report)
        result.protocol.update(
            {
                "stage": stage,
                "split": datamodule.split,
                "users_in_stage": len(eval_set),
                "exclude_seen": datamodule.exclude_seen,
                "max_history": datamodule.max_history,
                "epoch": trainer.current_epoch,
                "global_step": trainer.global_step,
            }
        )
        self.last_result = result
        for name, value in result.metrics.items():
            pl_module.log(f"{stage}/{name}", value, sync_dist=False, rank_zero_only=True)
        for name in (
            "corpus_size",
            "evaluated_users",
            "masked_users",
            "excluded_items_total",
            "exact",
            "seconds",
            "searched_embeddings",
        ):
            pl_module.log(f"{stage}/protocol/{name}", float(result.protocol[name]), rank_zero_only=True)
        if trainer.is_global_zero:
            k = 50 if "recall@50" in result.metrics else self.evaluator.ks[-1]
            m, p = result.metrics, result.protocol
            rank_zero_info(
                f"[{stage} epoch {trainer.current_epoch}] recall@{k}={m.get(f'recall@{k}', 0):.4f} "
                f"ndcg@{k}={m.get(f'ndcg@{k}', 0):.4f} coverage@{k}={m.get(f'coverage@{k}', 0):.4f} | {p['index']} "
                f"index over {p['corpus_size']:,} items, {p['evaluated_users']:,} users, {p['seconds']:.1f} s"
            )
            log_evaluation_tables(trainer, stage, result, eval_set, datamodule, rows)
        run_dir = self.run_dir(trainer)  # every process: trainer.log_dir is a collective under DDP
        if self.result_card and trainer.is_global_zero:
            card = {
                "model": getattr(pl_module, "display_name", type(pl_module).__name__),
                "parameters": int(sum(p.numel() for p in pl_module.parameters())),
                "stage": stage,
                "metrics": result.metrics,
                "protocol": result.protocol,
                "data": datamodule.describe(),
                "eval_report": eval_set.report,
            }
            write_result_card(run_dir, stage, card)
        if self.result_card and trainer.is_global_zero:  # per_user_<stage>.parquet beside the card
            metrics = self.evaluator.metrics
            write_evaluation_per_user(run_dir, stage, datamodule, rows, result, metrics, self.segment_edges)
        self._reset()
