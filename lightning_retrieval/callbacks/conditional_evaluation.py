"""Evaluation of (user, condition) queries: conditional recall, topic match rate and filter cost."""

from __future__ import annotations

import numpy as np
import torch

from lightning_retrieval.callbacks.base import RetrievalCallback, evaluation_mode
from lightning_retrieval.callbacks.per_user import per_user_table, write_per_user
from lightning_retrieval.callbacks.result_card import write_result_card
from lightning_retrieval.data.preparation import CSR, sorted_member, take_rows
from lightning_retrieval.metrics.base import RankedLists, RetrievalMetric
from lightning_retrieval.registry import register, resolve
from lightning_retrieval.retrieval.evaluator import id_space
from lightning_retrieval.retrieval.filtering import FilterMode, TopicFilter, filtered_retrieve
from lightning_retrieval.retrieval.index import IndexBackend, default_exact_index


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

    Models whose queries take a topic (``queries: topic_conditions`` or ``combined``) embed the user under the
    topic; other models (``queries: single``, ``popularity``) ignore it, so the same callback evaluates CR,
    CR + filter, LR + filter and INDEX (``popularity`` + ``prefilter``: the topic's most popular items).
    Metrics (means over queries):

    - ``cond_<metric>@k`` for each of ``metrics`` (registry ``metrics``, default ``recall`` and ``ndcg``),
      computed against the user's targets that carry the topic;
    - ``match_rate@k``: share of retrieved items that carry the topic;
    - ``scanned_per_query``: candidates the search examined (see ``retrieval.filtering``);
    - ``short_queries``: share of queries that got fewer than k items.

    Args:
        filter: ``none``, ``prefilter``, ``postfilter`` or ``streaming``.
        metrics: per-query metrics from the metric registry, reported as ``cond_<name>@k``.
    """

    def __init__(
        self,
        ks: list[int] = [50],  # noqa: B006
        index: IndexBackend | None = None,
        filter: FilterMode = "none",
        overfetch: int = 4,
        streaming_step: int = 100,
        streaming_budget: int | None = None,
        batch_size: int = 1024,
        result_card: bool = True,
        metrics: list[str] = ["recall", "ndcg"],  # noqa: B006
    ):
        super().__init__()
        self.ks = sorted(set(ks))
        self.index = index if index is not None else default_exact_index()
        self.filter = filter
        self.metrics: list[RetrievalMetric] = [resolve("metrics", m)() for m in metrics]
        not_per_query = [m.name for m in self.metrics if not m.per_user]
        if not_per_query:
            raise ValueError(f"conditional evaluation averages per-query metrics; {not_per_query} are corpus-level")
        self.overfetch, self.streaming_step, self.streaming_budget = overfetch, streaming_step, streaming_budget
        self.batch_size, self.result_card = batch_size, result_card
        self.last_metrics: dict[str, float] = {}

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._evaluate(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module):
        self._evaluate(trainer, pl_module, "test")

    def _query_vectors(self, pl_module, builder, users, cutoff, topics) -> np.ndarray:
        """``[Q, D]``: the model's query for each (user, topic); models without topic conditions ignore the
        topic (``RetrievalModel.topic_queries``). Several queries per (user, topic) are refused."""
        out = []
        with evaluation_mode(pl_module):
            for s in range(0, len(users), self.batch_size):
                sl = slice(s, s + self.batch_size)
                batch = builder.user_features(torch.from_numpy(users[sl]), torch.from_numpy(cutoff[sl]))
                batch = {k: v.to(pl_module.device) for k, v in batch.items()}
                queries = pl_module.topic_queries(batch, torch.from_numpy(topics[sl]).to(pl_module.device))
                if queries.num_queries != 1:
                    raise ValueError(
                        f"conditional evaluation needs one query per (user, topic); {type(pl_module).__name__} gives "
                        f"{queries.num_queries} ({', '.join(sorted(set(queries.kinds)))}): use queries "
                        "single, topic_conditions or combined"
                    )
                out.append((queries.vectors[:, 0] * queries.valid).float().cpu())
        return torch.cat(out).numpy()

    def _evaluate(self, trainer, pl_module, stage: str) -> None:
        dm = trainer.datamodule
        es, item_topics, num_topics = dm.evaluation_set(stage), dm.item_topics(), dm.num_topics
        rows, topics, q_targets = condition_queries(es.targets, item_topics, num_topics)
        vectors = self._query_vectors(pl_module, dm.builder_for(stage), es.users[rows], es.cutoff[rows], topics)
        item_vectors = self.corpus_vectors(trainer, pl_module, stage)
        self.index.build(item_vectors)
        depth = max(self.ks)
        topic_filter = TopicFilter(item_topics, num_topics)
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
        lists = RankedLists(res.items, hits, q_targets.lengths, np.ones(len(rows), dtype=bool), n_items)
        matches = topic_filter.matches(res.items, topics)
        per_query = {}  # [Q] each; NaN: the query does not count (match rate of a query that got nothing)
        for k in self.ks:
            got = (res.items[:, :k] >= 0).sum(1)
            for metric in self.metrics:  # the library's per-user metrics, one value per (user, topic) query
                per_query[f"cond_{metric.name}@{k}"] = np.asarray(metric.compute(lists, k), dtype=np.float64)
            per_query[f"match_rate@{k}"] = np.where(got > 0, matches[:, :k].sum(1) / np.maximum(got, 1), np.nan)
        per_query["scanned_per_query"] = res.scanned.astype(np.float64)
        per_query["short_queries"] = res.short.astype(np.float64)
        metrics = {
            name: float(v[~np.isnan(v)].mean()) if (~np.isnan(v)).any() else 0.0 for name, v in per_query.items()
        }
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
                "model": getattr(pl_module, "display_name", type(pl_module).__name__),
                "parameters": int(sum(p.numel() for p in pl_module.parameters())),
                "stage": stage,
                "metrics": metrics,
                "protocol": protocol,
                "data": dm.describe(),
            }
            write_result_card(run_dir, f"{stage}_conditional", card)
        if self.result_card and trainer.is_global_zero:  # per_user_<stage>_conditional.parquet: one row per query
            table = per_user_table(dm, stage, rows, per_query, keys={"topic": dm.topic_names[topics]})
            write_per_user(run_dir, f"{stage}_conditional", table)
