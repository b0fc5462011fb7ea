"""Evaluation of (user, condition) queries: conditional recall, topic match rate and filter cost."""

from __future__ import annotations

import numpy as np
import torch
from jsonargparse import lazy_instance

from lightning_retrieval.callbacks.base import RetrievalCallback, evaluation_mode
from lightning_retrieval.callbacks.result_card import write_result_card
from lightning_retrieval.data.preparation import CSR, sorted_member, take_rows
from lightning_retrieval.registry import register
from lightning_retrieval.retrieval.evaluator import id_space
from lightning_retrieval.retrieval.filtering import FilterMode, TopicFilter, filtered_retrieve
from lightning_retrieval.retrieval.index import ExactIndex, IndexBackend


def condition_queries(targets: CSR, item_topics: CSR, num_topics: int) -> tuple[np.ndarray, np.ndarray, CSR]:
    """Distinct (user row, topic) queries from the topics of each user's targets.

    Returns ``(rows [Q], topics [Q], targets_with_topic CSR [Q])``: the user's targets carrying the topic.
    """
    t_rows, t_items = targets.row_ids(), targets.values
    lengths = item_topics.lengths[t_items]
    rows = np.repeat(t_rows, lengths)
    items = np.repeat(t_items, lengths)
    starts = np.repeat(item_topics.offsets[t_items], lengths)
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    topics = item_topics.values[starts + within]
    key = rows.astype(np.int64) * num_topics + topics
    order = np.lexsort((items, key))
    key, items = key[order], items[order]
    uniq, first = np.unique(key, return_index=True)
    q_targets = CSR.from_sorted_pairs(
        np.repeat(np.arange(len(uniq)), np.diff(np.append(first, len(key)))), items, len(uniq)
    )
    return uniq // num_topics, uniq % num_topics, q_targets


@register("conditional_evaluation")
class ConditionalEvaluation(RetrievalCallback):
    """For every evaluated user and every topic of their targets, retrieve with that topic as the condition.

    Conditional models (``conditional``) embed the user under the topic; other models (``two_tower``,
    ``popularity``) ignore it, so the same callback evaluates CR, CR + filter, LR + filter and INDEX
    (``popularity`` + ``prefilter``: the topic's most popular items). Metrics (means over queries):

    - ``cond_recall@k``: share of the user's targets carrying the topic that are retrieved;
    - ``cond_ndcg@k``: binary NDCG against those targets;
    - ``match_rate@k``: share of retrieved items that carry the topic;
    - ``scanned_per_query``: candidates the search examined (see ``retrieval.filtering``);
    - ``short_queries``: share of queries that got fewer than k items.

    Args:
        filter: ``none``, ``prefilter``, ``postfilter`` or ``streaming``.
    """

    def __init__(
        self,
        ks: list[int] = [50],  # noqa: B006
        index: IndexBackend = lazy_instance(ExactIndex),
        filter: FilterMode = "none",
        overfetch: int = 4,
        streaming_step: int = 100,
        streaming_budget: int | None = None,
        batch_size: int = 1024,
        result_card: bool = True,
    ):
        super().__init__()
        self.ks = sorted(set(ks))
        self.index, self.filter = index, filter
        self.overfetch, self.streaming_step, self.streaming_budget = overfetch, streaming_step, streaming_budget
        self.batch_size, self.result_card = batch_size, result_card
        self.last_metrics: dict[str, float] = {}

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._evaluate(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module):
        self._evaluate(trainer, pl_module, "test")

    def _query_vectors(self, pl_module, builder, users, cutoff, topics) -> np.ndarray:
        out = []
        with evaluation_mode(pl_module):
            for s in range(0, len(users), self.batch_size):
                sl = slice(s, s + self.batch_size)
                batch = builder.user_features(torch.from_numpy(users[sl]), torch.from_numpy(cutoff[sl]))
                batch = {k: v.to(pl_module.device) for k, v in batch.items()}
                if hasattr(pl_module, "embed_conditioned"):
                    vectors = pl_module.embed_conditioned(batch, torch.from_numpy(topics[sl]).to(pl_module.device))
                else:
                    vectors = pl_module.embed_users(batch)
                    if isinstance(vectors, tuple):
                        raise TypeError("conditional evaluation needs a single-embedding or conditional model")
                out.append(vectors.float().cpu())
        return torch.cat(out).numpy()

    def _evaluate(self, trainer, pl_module, stage: str) -> None:
        dm = trainer.datamodule
        es, data = dm.evaluation_set(stage), dm.data
        rows, topics, q_targets = condition_queries(es.targets, data.item_topics, data.num_topics)
        vectors = self._query_vectors(pl_module, dm.builder_for(stage), es.users[rows], es.cutoff[rows], topics)
        item_vectors = self.corpus_vectors(trainer, pl_module, stage)
        self.index.build(item_vectors)
        depth = max(self.ks)
        topic_filter = TopicFilter(data.item_topics, data.num_topics)
        res = filtered_retrieve(
            self.index,
            vectors,
            topics,
            topic_filter,
            take_rows(es.exclude, rows),
            depth,
            self.filter,
            self.overfetch,
            self.streaming_step,
            self.streaming_budget,
        )
        n_items = id_space(self.index)
        hits = sorted_member(np.arange(len(rows))[:, None] * n_items + res.items, q_targets.keys(n_items))
        hits &= res.items >= 0
        matches = topic_filter.matches(res.items, topics)
        metrics = {}
        for k in self.ks:
            got = (res.items[:, :k] >= 0).sum(1)
            metrics[f"cond_recall@{k}"] = float((hits[:, :k].sum(1) / q_targets.lengths).mean())
            discounts = 1.0 / np.log2(np.arange(2, k + 2))
            ideal = np.concatenate([[0.0], np.cumsum(discounts)])[np.minimum(q_targets.lengths, k)]
            metrics[f"cond_ndcg@{k}"] = float(((hits[:, :k] * discounts).sum(1) / ideal).mean())
            rate = matches[:, :k].sum(1) / np.maximum(got, 1)
            metrics[f"match_rate@{k}"] = float(rate[got > 0].mean()) if (got > 0).any() else 0.0
        metrics["scanned_per_query"] = float(res.scanned.mean())
        metrics["short_queries"] = float(res.short.mean())
        self.last_metrics = metrics
        for name, value in metrics.items():
            pl_module.log(f"{stage}/{name}", value, rank_zero_only=True)
        run_dir = self.run_dir(trainer)  # every process: trainer.log_dir is a collective under DDP
        if self.result_card and trainer.is_global_zero:
            protocol = {
                "stage": stage,
                "queries": int(len(rows)),
                "users": int(len(es)),
                "filter": self.filter,
                "ks": self.ks,
                "query_conditions": "topics of each user's targets",
                **self.index.describe(),
            }
            card = {
                "model": type(pl_module).__name__,
                "parameters": int(sum(p.numel() for p in pl_module.parameters())),
                "stage": stage,
                "metrics": metrics,
                "protocol": protocol,
                "data": dm.describe(),
            }
            write_result_card(run_dir, f"{stage}_conditional", card)
