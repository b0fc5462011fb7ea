"""Towers, crossing blocks, ID tables and the retrieval (single query) / popularity tasks."""

import pytest
import torch

from lightning_retrieval.models.crossing import MLPCrossing
from lightning_retrieval.models.embeddings import IdEmbeddings
from lightning_retrieval.models.towers import FeatureCrossingTower
from lightning_retrieval.tasks import PopularityRetrieval, RetrievalTask


def test_mlp_crossing_shapes_and_dim_errors():
    block = MLPCrossing(3, 8, hidden_dims=[16, 4])
    assert block(torch.randn(5, 3, 8)).shape == (5, 4) and block.output_dim == 4
    with pytest.raises(ValueError, match=r"expects fields of shape \[B, 3, 8\], got \[5, 2, 8\]"):
        block(torch.randn(5, 2, 8))
    with pytest.raises(ValueError, match="hidden_dims must be positive widths"):
        MLPCrossing(3, 8, hidden_dims=[16, 0])
    fields = torch.randn(5, 3, 8)
    none = MLPCrossing(3, 8, hidden_dims=[], dropout=0.5)  # no hidden layer: the fields pass flattened
    assert none.output_dim == 24 and torch.equal(none.train()(fields), fields.flatten(1))
    with pytest.raises(ValueError, match="num_fields >= 1"):
        MLPCrossing(0, 8)


def test_tower_is_normalised_and_every_parameter_gets_gradient():
    tower = FeatureCrossingTower(3, 8, crossing=lambda f, d: MLPCrossing(f, d, hidden_dims=[16]), output_dim=6)
    out = tower(torch.randn(4, 3, 8))
    assert out.shape == (4, 6)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4))
    (out * torch.randn(4, 6)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.parameters())


def test_a_tower_without_hidden_layers_is_linear_in_its_normalised_fields():
    tower = FeatureCrossingTower(3, 8, crossing=lambda f, d: MLPCrossing(f, d, hidden_dims=[]), output_dim=6)
    fields = torch.randn(4, 3, 8)
    normed = torch.stack([ln(fields[:, i]) for i, ln in enumerate(tower.field_norm)], dim=1).flatten(1)
    expected = torch.nn.functional.normalize(tower.projection(normed), dim=-1)
    torch.testing.assert_close(tower(fields), expected)


def test_id_embeddings_pool_means_and_reject_out_of_range_ids():
    emb = IdEmbeddings(num_users=3, num_items=5, num_topics=2, embedding_dim=4)
    out = emb({"history": (torch.tensor([1, 2, 4]), torch.tensor([2, 0, 1]))}, batch_size=3)["history"]
    table = emb.table("item_id")
    torch.testing.assert_close(out[0], table[[1, 2]].mean(0))
    torch.testing.assert_close(out[1], torch.zeros(4))  # empty history pools to zeros
    torch.testing.assert_close(out[2], table[4])
    with pytest.raises(IndexError, match=r"feature 'item': ids must be in \[0, 5\), got range \[0, 7\]"):
        emb({"item": (torch.tensor([0, 7]), torch.ones(2, dtype=torch.long))}, batch_size=2)


@pytest.fixture(scope="module")
def batch(movielens_dm):
    return next(iter(movielens_dm.train_dataloader()))


def test_two_tower_embeds_and_trains_on_a_real_batch(movielens_dm, batch):
    model = RetrievalTask(feature_spec=movielens_dm.feature_spec, embedding_dim=16)
    users, items = model.embed_users(batch).as_single(), model.embed_items(batch)
    assert users.shape == items.shape == (batch["user"].shape[0], 64)
    loss = model.compute_loss(batch)
    loss.backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert (
        any("user_id" in n for n in grads) and any("item_id" in n for n in grads) and any("topic" in n for n in grads)
    )
    assert any(n.startswith("user_tower") for n in grads) and any(n.startswith("item_tower") for n in grads)


def test_two_tower_history_changes_the_user_embedding(movielens_dm, batch):
    model = RetrievalTask(feature_spec=movielens_dm.feature_spec, embedding_dim=16).eval()
    altered = dict(batch)
    altered["history"] = (batch["history"] + 1) % movielens_dm.feature_spec["num_items"]
    with torch.no_grad():
        a, b = model.embed_users(batch).as_single(), model.embed_users(altered).as_single()
    changed = batch["history_mask"].any(1)
    assert (a[changed] - b[changed]).abs().sum(1).min() > 0
    torch.testing.assert_close(a[~changed], b[~changed])


def test_two_tower_requires_feature_spec_and_matching_tower_widths(movielens_dm):
    with pytest.raises(ValueError, match="needs feature_spec"):
        RetrievalTask()
    with pytest.raises(ValueError, match="same width"):
        RetrievalTask(
            feature_spec=movielens_dm.feature_spec, item_tower=lambda f, d: FeatureCrossingTower(f, d, output_dim=32)
        )


def test_popularity_scores_are_monotone_in_counts():
    model = PopularityRetrieval()
    items = model.embed_items({"item_count": torch.tensor([0.0, 5.0, 2.0])})
    users = model.embed_users({"user": torch.tensor([3, 4])}).as_single()
    scores = users @ items.T
    assert scores.argsort(dim=1, descending=True)[0].tolist() == [1, 2, 0]


def test_sequence_lookup_equals_one_item_bags_and_checks_ids():
    """The direct per-position lookup gives what pooling one-item bags through torchrec gives."""
    from lightning_retrieval.models.embeddings import IdEmbeddings

    torch.manual_seed(0)
    emb = IdEmbeddings(4, 9, 2, 8)
    ids = torch.tensor([[3, 0, 8], [5, 5, 1]])
    mask = torch.tensor([[True, False, True], [True, True, False]])
    direct = emb.sequence("history", ids, mask)
    bags = emb({"history": (ids[mask], mask.flatten().long())}, batch_size=6)["history"].view(2, 3, -1)
    torch.testing.assert_close(direct, bags)
    assert direct.shape == (2, 3, 8) and not direct[~mask].any()
    direct.sum().backward()
    grad = emb.table("item_id").grad
    assert (grad[[3, 8, 5]].abs().sum(1) > 0).all()
    assert not grad[[0, 1, 2, 4, 6, 7]].any()  # masked positions (ids 0 and 1) send no gradient
    with pytest.raises(IndexError, match=r"feature 'history': ids must be in \[0, 9\), got range \[1, 9\]"):
        emb.sequence("history", torch.tensor([[9, 1]]), torch.ones(1, 2, dtype=torch.bool))
