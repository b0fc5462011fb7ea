"""The speed rewrites compute what the plain formulations compute (outputs and gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_retrieval.models.embeddings import IdEmbeddings
from lightning_retrieval.models.fast_layers import AttentionLogits
from lightning_retrieval.models.interests.base import HistoryRows, recency_rank, squash
from lightning_retrieval.models.interests.dynamic_routing import DynamicRoutingInterests
from lightning_retrieval.models.interests.self_attention import SelfAttentiveInterests


def grads(outputs: dict[str, torch.Tensor] | torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    values = outputs.values() if isinstance(outputs, dict) else [outputs]
    weights = torch.Generator().manual_seed(1)
    loss = sum((v * torch.randn(v.shape, generator=weights)).sum() for v in values)
    return list(torch.autograd.grad(loss, params))


def test_id_embeddings_one_lookup_per_table_equals_the_torchrec_collection():
    torch.manual_seed(0)
    emb = IdEmbeddings(num_users=7, num_items=11, num_topics=3, embedding_dim=8)
    b = 5
    bags = {
        "user": (torch.randint(0, 7, (b,)), torch.ones(b, dtype=torch.long)),
        "history": (torch.randint(0, 11, (9,)), torch.tensor([0, 3, 2, 4, 0])),  # empty bags pool to zeros
        "item": (torch.randint(0, 11, (b,)), torch.ones(b, dtype=torch.long)),
        "item_topics": (torch.randint(0, 3, (6,)), torch.tensor([1, 0, 2, 2, 1])),
    }
    fast = emb(bags, b)
    reference = emb._pool_collection(bags, b)  # torchrec's lookup, every feature of every table
    assert list(fast) == list(bags)
    for name in bags:
        assert torch.equal(fast[name], reference[name]), name
    assert torch.equal(fast["history"][0], torch.zeros(8))
    params = list(emb.parameters())
    for g_fast, g_ref in zip(grads(fast, params), grads({k: reference[k] for k in bags}, params)):
        torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-6)


def test_id_embeddings_reject_unknown_features_and_bad_ids():
    emb = IdEmbeddings(num_users=3, num_items=4, num_topics=0, embedding_dim=4)
    one = torch.ones(2, dtype=torch.long)
    with pytest.raises(KeyError, match="unknown features \\['items'\\].*known features"):
        emb({"items": (torch.zeros(2, dtype=torch.long), one)}, 2)
    with pytest.raises(IndexError, match="feature 'item'"):
        emb({"item": (torch.tensor([0, 4]), one)}, 2)
    with pytest.raises(ValueError, match="3 bags for a batch of 2"):
        emb({"item": (torch.tensor([0, 1, 2]), torch.ones(3, dtype=torch.long))}, 2)


def routing_reference(module: DynamicRoutingInterests, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The routing written with einsums over ``[B, L, K, D]`` (the formulation before the layout rewrite)."""
    se = torch.einsum("ked,bld->blke", module.S, history).expand(-1, -1, module.num_interests, -1)
    logits = module.initial_logits[recency_rank(mask)]
    keep = mask[:, :, None].to(history.dtype)
    for step in range(module.iterations):
        weights = torch.softmax(logits, dim=-1) * keep
        capsules = squash(torch.einsum("blk,blkd->bkd", weights, se))
        if step < module.iterations - 1:
            logits = logits + torch.einsum("bkd,blkd->blk", capsules, se).detach()
    return capsules


@pytest.mark.parametrize(
    "settings", [{}, {"bilinear": "shared"}, {"init": "zeros", "bilinear_init": "normal"}], ids=str
)
def test_dynamic_routing_layout_equals_the_einsum_formulation(settings):
    torch.manual_seed(0)
    module = DynamicRoutingInterests(16, num_interests=4, **settings)
    history = torch.randn(6, 9, 16, requires_grad=True)
    mask = torch.rand(6, 9) > 0.3
    interests, valid = module(history, mask)
    reference = routing_reference(module, history, mask) * valid[:, :, None]
    torch.testing.assert_close(interests, reference, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(interests[valid][0], interests[valid][1])  # distinct capsules: the check can fail
    params = [history, module.S]
    for got, want in zip(grads(interests, params), grads(reference, params)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_attention_logits_equal_the_stock_tanh_layers():
    torch.manual_seed(0)
    fast = AttentionLogits(16, 64, 4)
    stock = nn.Sequential(nn.Linear(16, 64, bias=False), nn.Tanh(), nn.Linear(64, 4, bias=False))
    stock.load_state_dict(fast.state_dict())  # same keys: checkpoints of either load into the other
    x = torch.randn(3, 7, 16, requires_grad=True) * 3  # tanh saturates for part of the entries
    got, want = fast(x), stock(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g_fast, g_stock in zip(grads(got, [x, *fast.parameters()]), grads(want, [x, *stock.parameters()])):
        torch.testing.assert_close(g_fast, g_stock, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast(x[0]), stock(x[0]), rtol=1e-5, atol=1e-5)  # 2-D input: the stock path


def test_id_embeddings_look_up_a_sharded_collection_through_the_collection():
    """A sharded collection (torchrec's ``ShardedEmbeddingBagCollection`` also has an ``embedding_bags`` dict)
    trains its tables only through its own lookup: the one-lookup-per-table path must not bypass it."""

    class Sharded(nn.Module):  # stands in for the sharded collection: not an EmbeddingBagCollection
        def __init__(self, plain):
            super().__init__()
            self.plain, self.embedding_bags, self.calls = plain, plain.embedding_bags, 0

        def forward(self, kjt):
            self.calls += 1
            return self.plain(kjt)

    emb = IdEmbeddings(num_users=3, num_items=4, num_topics=0, embedding_dim=4)
    plain_out = emb({"item": (torch.tensor([1, 2]), torch.ones(2, dtype=torch.long))}, 2)["item"]
    emb.collection = Sharded(emb.collection)
    out = emb({"item": (torch.tensor([1, 2]), torch.ones(2, dtype=torch.long))}, 2)["item"]
    assert emb.collection.calls == 1 and torch.equal(out, plain_out)
    history = emb.sequence("history", torch.tensor([[0, 3]]), torch.tensor([[False, True]]))
    assert emb.collection.calls == 2 and torch.equal(history[0, 0], torch.zeros(4))


def test_history_topic_counts_from_the_dense_table_equal_the_scatter_and_a_naive_count(movielens_dm):
    examples = movielens_dm.train_dataloader().dataset
    builder, data = examples.builder, movielens_dm.data
    assert builder.item_topic_table is not None  # 9,742 items x 20 genres fit the dense table
    batch = examples.__getitems__(list(range(300)))
    history, mask, dense = batch["history"], batch["history_mask"], batch["history_topic_counts"]
    table, builder.item_topic_table = builder.item_topic_table, None
    try:
        scatter = builder.topic_counts(history, mask)  # the path for catalogues too large for the table
    finally:
        builder.item_topic_table = table
    assert torch.equal(dense, scatter)
    assert (~mask).any() and dense.sum() > 0
    for row in (0, 150, 299):
        expected = np.zeros(data.num_topics, dtype=np.float32)
        for item in history[row][mask[row]].tolist():
            np.add.at(expected, data.item_topics.row(item), 1.0)
        np.testing.assert_array_equal(dense[row].numpy(), expected)


@pytest.mark.parametrize("shape", [(50, 30), (1, 2000), (37, 1)], ids=str)
def test_blocked_attention_logits_equal_the_stock_layers_over_several_blocks(shape):
    """Blocks of ~1,000 rows: ragged last block, one user longer than a block, one position per user."""
    torch.manual_seed(0)
    fast = AttentionLogits(16, 32, 4)
    stock = nn.Sequential(nn.Linear(16, 32, bias=False), nn.Tanh(), nn.Linear(32, 4, bias=False))
    stock.load_state_dict(fast.state_dict())
    x = (torch.randn(*shape, 16) * 2).requires_grad_()
    got, want = fast(x), stock(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g_fast, g_stock in zip(grads(got, [x, *fast.parameters()]), grads(want, [x, *stock.parameters()])):
        torch.testing.assert_close(g_fast, g_stock, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), got)  # no graph: same values


def test_attention_logits_take_permuted_input_bf16_autocast_and_bf16_weights():
    """A non-contiguous input gets its gradient in x's shape; autocast and other dtypes run the stock layers
    (the hand-written products assume float32 throughout)."""
    torch.manual_seed(0)
    fast = AttentionLogits(16, 32, 4)
    stock = nn.Sequential(nn.Linear(16, 32, bias=False), nn.Tanh(), nn.Linear(32, 4, bias=False))
    stock.load_state_dict(fast.state_dict())
    x = torch.randn(9, 16, 7).requires_grad_()
    permuted = x.transpose(1, 2)  # [9, 7, 16], not contiguous
    got, want = fast(permuted), stock(permuted)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads(got, [x])[0], grads(want, [x])[0], rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto, auto_stock = fast(permuted), stock(permuted)
        rows, positions = torch.randn(5, 16), torch.randn(3, 16)
        indexed = fast.indexed(rows, positions, torch.tensor([0, 4, 2]), torch.tensor([1, 0, 2]))
    assert auto.dtype == auto_stock.dtype == torch.bfloat16 and torch.equal(auto, auto_stock)
    assert indexed.dtype == torch.bfloat16
    grads(auto, [x, *fast.parameters()])  # the backward runs
    half = AttentionLogits(16, 32, 4).to(torch.bfloat16)
    assert half(permuted.detach().to(torch.bfloat16)).dtype == torch.bfloat16


def test_sequence_lookup_equals_the_embedding_layer_values_and_gradients():
    torch.manual_seed(0)
    emb = IdEmbeddings(num_users=3, num_items=50, num_topics=0, embedding_dim=8)
    ids = torch.randint(0, 50, (6, 9))
    mask = torch.rand(6, 9) > 0.3
    weight = emb.collection.embedding_bags["item_id"].weight
    got = emb.sequence("history", ids, mask)
    want = F.embedding(ids.masked_fill(~mask, 0), weight) * mask[..., None]
    assert torch.equal(got, want)
    assert torch.equal(grads(got, [weight])[0], grads(want, [weight])[0])  # repeated ids accumulate alike


def test_self_attention_position_lookup_equals_the_embedding_layer():
    torch.manual_seed(0)
    module = SelfAttentiveInterests(16, num_interests=3, max_length=20)
    history = torch.randn(5, 12, 16, requires_grad=True)
    mask = torch.rand(5, 12) > 0.3
    got, valid = module(history, mask)
    keyed = history + module.position(recency_rank(mask))  # the stock embedding layer
    logits = module.attention(keyed).masked_fill(~mask[:, :, None], float("-inf"))
    attn = torch.softmax(logits, dim=1).nan_to_num(0.0)
    want = torch.einsum("blk,bld->bkd", attn, history) * valid[:, :, None]
    assert torch.equal(got, want)
    params = [history, *module.parameters()]
    for g_got, g_want in zip(grads(got, params), grads(want, params)):
        assert torch.equal(g_got, g_want)


@pytest.mark.parametrize("n", [5, 1024 + 64 * 3, 2500], ids=str)
def test_indexed_attention_logits_equal_the_stock_layers_on_gathered_rows(n):
    """Per distinct row and position, then gathered: blocks of 1,024 pairs, the last one a multiple of 64 or not."""
    torch.manual_seed(0)
    fast = AttentionLogits(16, 32, 4)
    stock = nn.Sequential(nn.Linear(16, 32, bias=False), nn.Tanh(), nn.Linear(32, 4, bias=False))
    stock.load_state_dict(fast.state_dict())
    rows = (torch.randn(40, 16) * 2).requires_grad_()
    positions = torch.randn(7, 16).requires_grad_()
    row_index, position_index = torch.randint(0, 40, (n,)), torch.randint(0, 7, (n,))
    got = fast.indexed(rows, positions, row_index, position_index)
    want = stock(rows[row_index] + positions[position_index])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    params = [rows, positions]
    for g_fast, g_stock in zip(grads(got, [*params, *fast.parameters()]), grads(want, [*params, *stock.parameters()])):
        torch.testing.assert_close(g_fast, g_stock, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("max_length", [20, 0], ids=["positions", "no_positions"])
def test_self_attention_on_distinct_history_rows_equals_the_gathered_history(max_length):
    torch.manual_seed(0)
    module = SelfAttentiveInterests(16, num_interests=3, max_length=max_length)
    ids = torch.randint(0, 6, (5, 12))  # few distinct items: rows repeat
    mask = torch.rand(5, 12) > 0.3
    mask[4] = False  # a user without history
    table = torch.randn(6, 16, requires_grad=True)
    distinct, inverse = torch.unique(ids[mask], return_inverse=True)
    rows = HistoryRows(table[distinct], torch.zeros_like(ids).masked_scatter_(mask, inverse))
    history = table[ids] * mask[..., None]
    torch.testing.assert_close(rows.gather(mask), history, rtol=0, atol=0)
    got, valid = module(rows.gather(mask), mask, rows=rows)
    want, valid_want = module(history, mask)
    assert torch.equal(valid, valid_want)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    params = [table, *module.parameters()]
    for g_got, g_want in zip(grads(got, params), grads(want, params)):
        torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-5)


def test_sequence_rows_gather_to_the_sequence_and_step_aside_for_training_dropout():
    torch.manual_seed(0)
    emb = IdEmbeddings(num_users=3, num_items=50, num_topics=0, embedding_dim=8)
    ids = torch.randint(0, 50, (6, 9))
    mask = torch.rand(6, 9) > 0.3
    rows, index = emb.sequence_rows("history", ids, mask)
    assert rows.shape[0] == ids[mask].unique().numel()
    assert torch.equal(HistoryRows(rows, index).gather(mask), emb.sequence("history", ids, mask))
    assert emb.sequence_rows("history", ids, torch.zeros_like(mask)) is None  # nothing valid
    with pytest.raises(IndexError, match="history"):
        emb.sequence_rows("history", ids + 50, mask)
    dropped = IdEmbeddings(num_users=3, num_items=50, num_topics=0, embedding_dim=8, dropout=0.5)
    assert dropped.sequence_rows("history", ids, mask) is None  # training: every position draws its own mask
    assert dropped.eval().sequence_rows("history", ids, mask) is not None


def test_interest_queries_hand_self_attention_the_distinct_history_rows(movielens_dm):
    from functools import partial

    from lightning_retrieval.queries import InterestQueries
    from lightning_retrieval.tasks import RetrievalTask

    batch = next(iter(movielens_dm.train_dataloader()))
    torch.manual_seed(0)
    queries = partial(InterestQueries, interests=partial(SelfAttentiveInterests, num_interests=4))
    task = RetrievalTask(movielens_dm.feature_spec, 16, queries=queries)
    attention = task.queries.interests.attention
    calls = []
    indexed = attention.indexed
    attention.indexed = lambda *args: calls.append(args[0].shape[0]) or indexed(*args)
    params = [p for p in task.parameters() if p.requires_grad]
    torch.manual_seed(1)
    got = task.compute_loss(batch)
    got_grads = torch.autograd.grad(got, params, allow_unused=True)
    assert calls == [batch["history"][batch["history_mask"]].unique().numel()]  # the distinct items' rows
    task.history_rows = lambda batch: None  # the encoder gives no rows: the module runs on [B, L, D]
    torch.manual_seed(1)
    want = task.compute_loss(batch)
    want_grads = torch.autograd.grad(want, params, allow_unused=True)
    assert len(calls) == 1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g_got, g_want in zip(got_grads, want_grads):
        if g_want is not None:
            torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-6)
