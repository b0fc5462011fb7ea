"""``interests`` queries, ``history_space: items``: the interest module clusters the history's item-tower vectors."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from lightning_retrieval.data import RetrievalDataModule
from lightning_retrieval.data.synthetic import SyntheticInterestsSource
from lightning_retrieval.models.interests import DifferentiableClusteringModule
from lightning_retrieval.queries import InterestQueries
from lightning_retrieval.tasks import RetrievalTask

DIM = 64  # the default towers' output size: the item-tower vectors feed an interest module of this size


def datamodule(history_item_features: bool) -> RetrievalDataModule:
    source = SyntheticInterestsSource(
        num_users=150, num_items=400, num_clusters=8, min_interests=2, max_interests=3, min_interactions=12,
        max_interactions=20, seed=0,
    )  # fmt: skip
    dm = RetrievalDataModule(
        source=source, max_history=15, batch_size=128, eval_batch_size=128, history_item_features=history_item_features
    )
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def dm():
    return datamodule(True)


def model_for(dm, history_space: str) -> RetrievalTask:
    torch.manual_seed(0)
    dcm = partial(DifferentiableClusteringModule, num_interests=3, centroid_scale="unit")
    queries = partial(InterestQueries, interests=dcm, history_space=history_space, serving_rule="all")
    return RetrievalTask(dm.feature_spec, DIM, queries=queries)


def test_item_space_history_is_the_item_tower_of_each_history_item_and_zero_at_padding(dm):
    batch = next(iter(dm.train_dataloader()))
    model = model_for(dm, "items").eval()
    mask = batch["history_mask"]
    with torch.no_grad():
        vectors = model.queries.history_vectors(model, batch)
        # independently: the item tower of every valid position's item, built as target items are
        one_by_one = model.embed_items(dm.builder_for("fit").item_features(batch["history"][mask]))
    assert vectors.shape == (*mask.shape, DIM)
    torch.testing.assert_close(vectors[mask], one_by_one)
    assert torch.equal(vectors[~mask], torch.zeros_like(vectors[~mask]))
    assert batch["history_item"].unique().numel() == batch["history_item"].numel()  # each item embedded once


def test_item_space_trains_the_item_tower_through_the_interests(dm):
    batch = next(iter(dm.train_dataloader()))
    model = model_for(dm, "items")
    interests, valid, _ = model.queries.interest_vectors(model, batch)
    interests[valid].sum().backward()  # the interest path alone
    grads = [p.grad for p in model.item_tower.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_item_space_history_separates_planted_clusters_where_barely_trained_id_rows_do_not(dm):
    """Items whose ID rows are barely trained (random, shrunk 10x from the initialisation) but whose features say
    their cluster (topic): in item space a user's history items of one planted cluster are more alike than items of
    two clusters (what DCM's maxmin seeding and routing rely on); in ID space (random directions) only by chance."""
    batch = next(iter(dm.train_dataloader()))
    cluster = torch.from_numpy(dm.source.item_clusters()[dm.item_ids.astype(np.int64)])[batch["history"]]  # [B, L]
    mask = batch["history_mask"]
    pairs = mask[:, :, None] & mask[:, None, :] & ~torch.eye(mask.shape[1], dtype=torch.bool)
    same = (cluster[:, :, None] == cluster[:, None, :]) & pairs
    other = (cluster[:, :, None] != cluster[:, None, :]) & pairs
    users = same.any((1, 2)) & other.any((1, 2))
    separated = {}
    for space in ("ids", "items"):
        model = model_for(dm, space).eval()
        with torch.no_grad():
            model.embeddings.collection.embedding_bags["item_id"].weight.mul_(0.1)
            unit = torch.nn.functional.normalize(model.queries.history_vectors(model, batch), dim=-1)
        sims = unit @ unit.transpose(1, 2)  # [B, L, L]
        within = (sims * same).sum((1, 2)) / same.sum((1, 2)).clamp(min=1)
        between = (sims * other).sum((1, 2)) / other.sum((1, 2)).clamp(min=1)
        separated[space] = float((within > between + 0.1)[users].float().mean())
    assert separated["items"] > 0.85, separated
    assert separated["ids"] < 0.2, separated


def test_item_space_without_the_history_item_features_says_which_setting_to_turn_on():
    plain = datamodule(False)
    batch = next(iter(plain.train_dataloader()))
    assert "history_item" not in batch
    model = model_for(plain, "items")
    with pytest.raises(KeyError, match="data.history_item_features: true"):
        model.queries.interest_vectors(model, batch)
    with pytest.raises(ValueError, match="history_space must be 'ids' or 'items'"):
        InterestQueries(DIM, interests=DifferentiableClusteringModule, history_space="tower")
