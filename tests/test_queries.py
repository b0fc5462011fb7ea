"""User queries: the ``UserQueries`` contract, every query kind through the one retrieval task (loss terms, corpus
negatives, pre-trained IDs, serving), a query kind as a plugin, retired task names, evaluator metric needs."""

import textwrap
from functools import partial

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml

from lightning_retrieval.cli import prepare_registry
from lightning_retrieval.data import MovieLensSource, RetrievalDataModule
from lightning_retrieval.data.negatives import UniformNegativeSampler
from lightning_retrieval.models.interests import DifferentiableClusteringModule
from lightning_retrieval.models.pretrained import PretrainedIds, save_pretrained_ids
from lightning_retrieval.queries import (
    CombinedQueries,
    InterestQueries,
    SingleQuery,
    TopicConditionQueries,
    UserQueries,
)
from lightning_retrieval.registry import UnknownComponentError, resolve
from lightning_retrieval.registry.plugins import load_plugins
from lightning_retrieval.tasks import RetrievalTask

from conftest import run_cli

prepare_registry()

DCM3 = partial(DifferentiableClusteringModule, num_interests=3)
QUERY_KINDS = {
    "single": SingleQuery,
    "interests": partial(InterestQueries, interests=DCM3),
    "interests_keep_history": partial(InterestQueries, interests=DCM3, history_field="keep"),
    "topic_conditions": TopicConditionQueries,
    "combined": partial(CombinedQueries, interests=DCM3),
}
LOSS_TERMS = {"combined": ["implicit", "explicit"], "topic_conditions": ["explicit"]}


@pytest.fixture(scope="module")
def dm_negatives():
    dm = RetrievalDataModule(
        source=MovieLensSource(),
        max_history=20,
        batch_size=64,
        eval_batch_size=64,
        negative_sampler=UniformNegativeSampler(num_negatives=32),
    )
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def neg_batch(dm_negatives):
    return next(iter(dm_negatives.train_dataloader()))


def test_user_queries_checks_shapes_and_single_is_k_1():
    q = UserQueries.single(torch.randn(4, 8))
    assert q.vectors.shape == (4, 1, 8) and q.valid.all() and q.kinds == ("user",)
    torch.testing.assert_close(q.as_single(), q.vectors[:, 0])
    with pytest.raises(ValueError, match=r"vectors must be \[B, K, D\]"):
        UserQueries(torch.randn(4, 8), torch.ones(4, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="valid must be a bool"):
        UserQueries(torch.randn(4, 2, 8), torch.ones(4, 2))
    with pytest.raises(ValueError, match="one label per slot"):
        UserQueries(torch.randn(4, 2, 8), torch.ones(4, 2, dtype=torch.bool), kinds=("user",))
    two = UserQueries.concat([q, UserQueries.single(torch.randn(4, 8), kind="topic")])
    assert two.kinds == ("user", "topic") and two.weights is None
    with pytest.raises(ValueError, match="expected one query per user, got K = 2"):
        two.as_single()


@pytest.mark.parametrize("kind", list(QUERY_KINDS))
def test_every_loss_term_sees_the_corpus_negatives_and_targets_are_embedded_once(dm_negatives, neg_batch, kind):
    torch.manual_seed(0)
    model = RetrievalTask(dm_negatives.feature_spec, 16, queries=QUERY_KINDS[kind])
    embedded, loss_calls = [], []
    embed_items, loss = model.embed_items, model.loss.forward

    def counting_embed_items(batch, prefix="item"):
        embedded.append(prefix)
        return embed_items(batch, prefix)

    def recording_loss(user, item, item_ids, item_log_q, neg=None, neg_ids=None, neg_log_q=None):
        loss_calls.append((item, neg, neg_ids))
        return loss(user, item, item_ids, item_log_q, neg, neg_ids, neg_log_q)

    model.embed_items = counting_embed_items
    model.loss.forward = recording_loss
    terms = model.loss_terms(neg_batch)
    assert list(terms) == LOSS_TERMS.get(kind, ["implicit" if "interests" in kind else "main"])
    assert sorted(embedded) == ["item", "neg_item"]  # targets and negatives embedded once for all terms
    assert len(loss_calls) == len(terms)
    for item, neg, neg_ids in loss_calls:
        assert item is loss_calls[0][0]  # every term scores the same target vectors
        assert neg is not None and neg.shape[0] == 32 and torch.equal(neg_ids, neg_batch["neg_item"])
    sum(terms.values()).backward()
    assert model.embeddings.table("item_id").grad[neg_batch["neg_item"]].abs().sum() > 0


def test_combined_weights_the_explicit_term(dm_negatives, neg_batch):
    torch.manual_seed(0)
    model = RetrievalTask(dm_negatives.feature_spec, 16, queries=partial(CombinedQueries, interests=DCM3)).eval()
    model.queries.explicit_weight = 1.0
    model.queries.explicit.generator.manual_seed(3)
    full = model.loss_terms(neg_batch)
    model.queries.explicit_weight = 0.25
    model.queries.explicit.generator.manual_seed(3)
    quarter = model.loss_terms(neg_batch)
    torch.testing.assert_close(quarter["explicit"], 0.25 * full["explicit"])
    torch.testing.assert_close(quarter["implicit"], full["implicit"])


@pytest.mark.parametrize("kind", list(QUERY_KINDS))
def test_pretrained_ids_load_frozen_into_every_query_kind(tmp_path, movielens_dm, kind):
    spec, dim = movielens_dm.feature_spec, 16
    gen = torch.Generator().manual_seed(0)
    user_table = torch.randn(spec["num_users"], dim, generator=gen)
    item_table = torch.randn(spec["num_items"], dim, generator=gen)
    path = save_pretrained_ids(
        tmp_path / "ids.pt", movielens_dm.user_ids, user_table, movielens_dm.item_ids, item_table, (0.0, 1.0)
    )
    model = RetrievalTask(spec, dim, queries=QUERY_KINDS[kind], pretrained_ids=PretrainedIds(str(path)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = pl.Trainer(
        max_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=movielens_dm)
    assert model.pretrained_report["user_id_loaded"] == spec["num_users"]
    assert model.pretrained_report["item_id_loaded"] == spec["num_items"]
    torch.testing.assert_close(model.embeddings.table("user_id").detach(), user_table)  # loaded, then frozen
    torch.testing.assert_close(model.embeddings.table("item_id").detach(), item_table)
    assert model.embeddings.dropout.p == 0.5
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert any(n.startswith("user_tower") for n in changed) and any(n.startswith("queries") for n in changed) == (
        kind not in ("single",)
    )


def test_serving_queries_of_each_kind(movielens_dm):
    batch = next(iter(movielens_dm.val_dataloader()))
    torch.manual_seed(0)
    cr = RetrievalTask(movielens_dm.feature_spec, 16, queries=TopicConditionQueries).eval()
    with torch.no_grad():
        served = cr.embed_users(batch)
        topics, weights = cr.queries.condition.serving_conditions(batch)
        for c in range(topics.shape[1]):  # serving query c is the explicit query for the c-th serving topic
            explicit = cr.topic_queries(batch, topics[:, c])
            torch.testing.assert_close(explicit.as_single(), served.vectors[:, c])
        none = cr.topic_queries(batch, torch.full_like(batch["user"], -1)).as_single()
    assert served.kinds == ("topic",) * 5 and torch.equal(served.weights, weights)
    assert torch.equal(served.valid, (weights > 0) | ((torch.arange(5) == 0) & ~(weights > 0).any(1, keepdim=True)))
    assert (none - served.vectors[:, 0]).norm(dim=1).min() > 1e-4  # the condition changes the query

    syn = RetrievalTask(movielens_dm.feature_spec, 16, queries=partial(CombinedQueries, interests=DCM3)).eval()
    with torch.no_grad():
        both = syn.embed_users(batch)
        implicit = syn.queries.implicit(syn, batch)
        explicit = syn.queries.explicit.serving_queries(syn, batch, fallback=False)
    assert both.kinds == ("interest",) * 3 + ("topic",) * 5
    torch.testing.assert_close(both.vectors, torch.cat([implicit.vectors, explicit.vectors], 1))
    assert torch.equal(both.valid, torch.cat([implicit.valid, explicit.valid], 1))

    single = RetrievalTask(movielens_dm.feature_spec, 16).eval()
    with torch.no_grad():
        one, topic = single.embed_users(batch), single.topic_queries(batch, torch.zeros_like(batch["user"]))
    torch.testing.assert_close(one.vectors, topic.vectors)  # a model without topic conditions ignores the topic


def test_history_field_keep_adds_the_pooled_history_next_to_the_interest(movielens_dm):
    spec = movielens_dm.feature_spec
    replace = RetrievalTask(spec, 16, queries=partial(InterestQueries, interests=DCM3))
    keep = RetrievalTask(spec, 16, queries=partial(InterestQueries, interests=DCM3, history_field="keep"))
    assert keep.num_user_fields == replace.num_user_fields + 1
    with pytest.raises(ValueError, match="history_field must be 'keep' or 'replace'"):
        RetrievalTask(spec, 16, queries=partial(InterestQueries, history_field="both"))


PLUGIN = '''
"""Query kind plugin: one query per recent history item (item-to-item seeds through the user tower)."""

import torch

from lightning_retrieval.queries import QueryLoss, UserQueries, UserQueryModule
from lightning_retrieval.queries.interests import select_interest
from lightning_retrieval.registry import register


@register("recent_items")
class RecentItemQueries(UserQueryModule):
    """``phi(u, h_j)`` for the user's ``num_recent`` most recent history items ``h_j``."""

    num_condition_fields = 1

    def __init__(self, embedding_dim, feature_spec=None, num_recent: int = 2):
        super().__init__(embedding_dim, feature_spec)
        self.num_recent = num_recent

    def recent(self, encoder, batch):
        history, mask = encoder.history_embeddings(batch), batch["history_mask"]
        return history[:, -self.num_recent :], mask[:, -self.num_recent :]  # histories are right-aligned

    def forward(self, encoder, batch):
        items, valid = self.recent(encoder, batch)
        valid = valid | ~valid.any(1, keepdim=True) & (torch.arange(valid.shape[1]) == valid.shape[1] - 1)
        return UserQueries(encoder.encode_users(batch, items), valid, None, ("recent",) * self.num_recent)

    def training_losses(self, encoder, batch, items):
        queries = self(encoder, batch)
        return [QueryLoss(select_interest(queries.vectors, queries.valid, items))]
'''


def test_a_query_kind_is_a_plugin_file_plus_yaml(tmp_path):
    plugins = tmp_path / "my_plugins"
    plugins.mkdir()
    (plugins / "recent_items.py").write_text(textwrap.dedent(PLUGIN))
    load_plugins([str(plugins)])
    assert resolve("queries", "recent_items").__name__ == "RecentItemQueries"
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 2,
            "limit_val_batches": 2,
            "num_sanity_val_steps": 0,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "callbacks": [{"class_path": "retrieval_evaluation", "init_args": {"ks": [10, 50]}}],
        },
        "model": {
            "class_path": "retrieval",
            "init_args": {
                "embedding_dim": 16,
                "queries": {"class_path": "recent_items", "init_args": {"num_recent": 3}},
            },
        },
        "data": {"max_history": 20, "batch_size": 128, "eval_batch_size": 256},
    }
    (tmp_path / "recent.yaml").write_text(yaml.safe_dump(config))
    run_cli("--plugins", str(plugins), "fit", "--config", "recent.yaml", cwd=tmp_path)
    card = yaml.safe_load(next((tmp_path / "runs").rglob("result_card_val.json")).read_text())
    assert card["protocol"]["embeddings_per_user"] == 3 and card["protocol"]["merger"] == "round_robin"
    assert 0 <= card["metrics"]["recall@50"] <= 1


def test_retired_task_names_say_what_to_write_instead():
    for old, new in (
        ("two_tower", "single"),
        ("multi_embedding", "interests"),
        ("conditional", "topic_conditions"),
        ("synergised", "combined"),
    ):
        with pytest.raises(UnknownComponentError, match=rf"class_path: retrieval.*queries: {{class_path: {new}}}"):
            resolve("tasks", old)


def test_retired_name_in_a_config_fails_with_the_new_key(tmp_path):
    out = run_cli("fit", "--model", "two_tower", "--print_config", cwd=tmp_path, check=False)
    assert out.returncode != 0 and "class_path: retrieval" in out.stderr and "queries" in out.stderr


# ---------------------------------------------------------------- evaluation consumes UserQueries
def test_evaluator_skips_metrics_whose_needs_are_missing_and_passes_user_queries():
    from lightning_retrieval.data.preparation import CSR
    from lightning_retrieval.metrics.base import RetrievalMetric
    from lightning_retrieval.retrieval import ExactIndex, RetrievalEvaluator

    seen = {}

    class QueryProbe(RetrievalMetric):
        name = "query_probe"
        accuracy = False
        needs = ("user_vectors",)

        def compute(self, lists, k):
            seen["vectors"], seen["valid"] = lists.user_vectors, lists.user_valid
            return lists.user_valid.sum(1).astype(float)

    rng = np.random.default_rng(0)
    items, users = rng.normal(size=(50, 4)).astype(np.float32), rng.normal(size=(6, 2, 4)).astype(np.float32)
    valid = np.array([[True, True], [True, False]] * 3)
    empty = CSR(np.zeros(7, dtype=np.int64), np.zeros(0, dtype=np.int64))
    targets = CSR.from_pairs_unique(np.arange(6), rng.integers(0, 50, 6), 6, 50)
    evaluator = RetrievalEvaluator([5], metrics=["recall", "topic_diversity", "embedding_diversity"])
    evaluator.metrics.append(QueryProbe())
    result = evaluator.evaluate(ExactIndex().build(items), users, targets, empty, item_topics=None, user_valid=valid)
    assert "topic_diversity@5" not in result.metrics and "embedding_diversity@5" not in result.metrics
    assert "topic_diversity (needs item_topics)" in result.protocol["skipped_metrics"]
    assert "embedding_diversity (needs item_embeddings)" in result.protocol["skipped_metrics"]
    assert result.metrics["query_probe@5"] == pytest.approx(1.5)
    assert seen["vectors"] is users and seen["valid"] is valid

    single = evaluator.evaluate(ExactIndex().build(items), users[:, 0], targets, empty)  # [U, D]: one query each
    as_k1 = evaluator.evaluate(ExactIndex().build(items), users[:, :1], targets, empty)
    np.testing.assert_array_equal(single.lists.items, as_k1.lists.items)
    assert single.protocol["embeddings_per_user"] == 1 and single.protocol["merger"] is None


def test_interest_routing_mass_becomes_the_query_weights(movielens_dm):
    batch = next(iter(movielens_dm.val_dataloader()))
    model = RetrievalTask(movielens_dm.feature_spec, 16, queries=partial(InterestQueries, interests=DCM3)).eval()
    with torch.no_grad():
        queries = model.embed_users(batch)
    mass = getattr(model.queries.interests, "routing_mass", None)
    if mass is None:
        pytest.skip("this interest module reports no routing mass")
    assert queries.weights is not None and torch.equal(queries.weights, mass)


def test_condition_draws_follow_the_run_seed_and_replay_per_batch(monkeypatch):
    """Topic conditions drawn in training follow --seed_everything (through the data seed) and the batch key:
    the same seed gives the same draws whatever the module's history; another seed or epoch gives others."""

    def conditions(global_seed: int, epoch: int = 0, warm_up: int = 0) -> torch.Tensor:
        monkeypatch.setenv("PL_GLOBAL_SEED", str(global_seed))
        dm = RetrievalDataModule(source=MovieLensSource(), max_history=20, batch_size=512, eval_batch_size=64)
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        batch = next(iter(loader))
        queries = TopicConditionQueries(16, dm.feature_spec)
        for _ in range(warm_up):  # draws on other batches must not shift this batch's draws
            queries.training_conditions(batch)
        return queries.training_conditions(batch)

    first = conditions(0)
    assert (first >= 0).float().mean() > 0.9  # nearly every MovieLens item has a genre
    assert torch.equal(first, conditions(0, warm_up=3))
    assert not torch.equal(first, conditions(1))
    assert not torch.equal(first, conditions(0, epoch=1))
