"""``faiss_factory`` options that reach the HNSW graph inside a factory index (ef_construction, ef_search) and
the exact re-rank of refine factories (k_factor)."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from lightning_retrieval.errors import ConfigError
from lightning_retrieval.retrieval.index import ExactIndex, FaissFactoryIndex, HNSWIndex, hnsw_graph, refine_index

K = 20


def _clustered(seed=0, clusters=30, per=100, dim=16, queries=80, spread=1.5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    items = centres[rng.integers(0, clusters, clusters * per)] + spread * rng.normal(size=(clusters * per, dim))
    users = centres[rng.integers(0, clusters, queries)] + spread * rng.normal(size=(queries, dim))
    return users.astype(np.float32), items.astype(np.float32)


def _recall(found, truth):
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


@pytest.fixture(scope="module")
def data():
    users, items = _clustered()
    return users, items, ExactIndex().build(items).search(users, K)[1]


@pytest.mark.parametrize("factory", ["HNSW8,SQ8", "HNSW8,SQ8,RFlat", "PCA16,HNSW8,Flat"])
def test_ef_construction_reaches_the_graph_before_add(data, factory):
    _, items, _ = data
    built = FaissFactoryIndex(factory, ef_construction=123).build(items)
    graph = hnsw_graph(built.index)
    assert graph.hnsw.efConstruction == 123 and graph.ntotal == len(items)
    assert hnsw_graph(FaissFactoryIndex(factory).build(items).index).hnsw.efConstruction == 40  # FAISS's default
    assert built.describe()["ef_construction"] == 123


def test_ef_construction_changes_the_graph(data):
    """A wider build gives a different (better-connected) graph: the option is applied before the vectors go in."""
    users, items, truth = data
    narrow = FaissFactoryIndex("HNSW4,Flat", ef_construction=4, ef_search=K).build(items)
    wide = FaissFactoryIndex("HNSW4,Flat", ef_construction=200, ef_search=K).build(items)
    assert _recall(wide.search(users, K)[1], truth) > _recall(narrow.search(users, K)[1], truth)


def test_recall_rises_with_ef_search_and_the_graph_searches_with_max_of_ef_and_k(data):
    users, items, truth = data
    recalls = []
    for ef in (1, 64, 256):
        index = FaissFactoryIndex("HNSW4,SQ8", ef_construction=40, ef_search=ef).build(items)
        recalls.append(_recall(index.search(users, K)[1], truth))
        assert hnsw_graph(index.index).hnsw.efSearch == max(ef, K)  # the same rule as the hnsw backend
    assert recalls[0] < recalls[1] <= recalls[2] and recalls[2] >= 0.95
    # the hnsw backend and the factory's graph over flat vectors answer alike with the same graph settings
    flat = FaissFactoryIndex("HNSW8,Flat", ef_construction=64, ef_search=48).build(items)
    native = HNSWIndex(m=8, ef_construction=64, ef_search=48).build(items)
    np.testing.assert_array_equal(flat.search(users, K)[1], native.search(users, K)[1])


def test_k_factor_reranks_more_candidates_exactly(data):
    """4-bit codes mis-order neighbours; re-scoring k * k_factor graph candidates with the float vectors fixes it."""
    users, items, truth = data
    index = FaissFactoryIndex("HNSW8,SQ4,RFlat", ef_construction=64, ef_search=K, k_factor=1).build(items)
    one = _recall(index.search(users, K)[1], truth)
    index.k_factor = 4
    scores, ids = index.search(users, K)
    assert index.index.k_factor == 4 and hnsw_graph(index.index).hnsw.efSearch == 4 * K  # graph asked for 4k
    assert _recall(ids, truth) > one and _recall(ids, truth) >= 0.95
    exact_scores = np.einsum("qkd,qd->qk", items[ids], users)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-4, atol=1e-4)  # re-ranked by the float vectors


@pytest.mark.parametrize(
    "factory,options",
    [
        ("HNSW8,SQ8", {}),
        ("HNSW8,SQ4,RFlat", {"k_factor": 3}),
        ("HNSW8,SQ8", {"locality_clusters": 8}),
        ("HNSW8,SQ4,RFlat", {"k_factor": 3, "locality_clusters": 8}),
        ("Flat", {"locality_clusters": 8}),
    ],
)
def test_pre_filtered_search_uses_the_graph_parameters(data, factory, options):
    users, items, _ = data
    allowed = np.arange(0, len(items), 3)
    graph = {"ef_construction": 64, "ef_search": 128} if "HNSW" in factory else {}
    index = FaissFactoryIndex(factory, **graph, **options).build(items)
    _, ids, _ = index.search_allowed(users, K, allowed)
    truth = allowed[ExactIndex().build(items[allowed]).search(users, K)[1]]
    assert np.isin(ids, allowed).all() and _recall(ids, truth) >= 0.95
    other = np.arange(1, len(items), 4)  # a second filter on the same index (storage order read once, reused)
    _, ids, _ = index.search_allowed(users, K, other)
    truth = other[ExactIndex().build(items[other]).search(users, K)[1]]
    assert np.isin(ids, other).all() and _recall(ids, truth) >= 0.9  # a sparser filter: 8-bit codes lose a little


def test_options_survive_save_and_load(tmp_path, data):
    from lightning_retrieval.cli import prepare_registry
    from lightning_retrieval.serving.index_io import load_index, save_index

    prepare_registry()
    users, items, _ = data
    options = {"ef_construction": 64, "ef_search": 50, "k_factor": 3, "locality_clusters": 8}
    built = FaissFactoryIndex("HNSW8,SQ4,RFlat", **options).build(items)
    entry = json.loads(json.dumps(save_index(built, tmp_path, np.arange(len(items)))))
    assert {k: entry["init_args"][k] for k in options} == options
    loaded = load_index(tmp_path, entry, items)
    np.testing.assert_array_equal(loaded.search(users, K)[1], built.search(users, K)[1])
    allowed = np.arange(0, len(items), 3)
    built.search_allowed(users, K, allowed)  # the built index's storage order is cached before the load's search
    np.testing.assert_array_equal(
        loaded.search_allowed(users, K, allowed)[1], built.search_allowed(users, K, allowed)[1]
    )
    assert refine_index(loaded.index).k_factor == 3 and hnsw_graph(loaded.index).hnsw.efSearch == 3 * K


def test_locality_clusters_reorder_storage_but_answer_with_corpus_ids(data):
    """Vectors are stored grouped by k-means cluster; an exhaustive search must still return the exact ids."""
    users, items = _clustered(seed=1, spread=0.2)  # tight clusters: grouping them is visible below
    truth_scores, truth = ExactIndex().build(items).search(users, K)
    grouped = FaissFactoryIndex("Flat", locality_clusters=30).build(items)
    stored = faiss.vector_to_array(faiss.downcast_index(grouped.index).id_map)  # corpus row of each stored slot
    assert sorted(stored.tolist()) == list(range(len(items)))  # a permutation of the corpus rows

    def step(vectors):  # mean distance between vectors stored next to each other
        return np.linalg.norm(np.diff(vectors, axis=0), axis=1).mean()

    assert step(items[stored]) < 0.5 * step(items)  # neighbours in storage are neighbours in space
    scores, ids = grouped.search(users, K)
    np.testing.assert_array_equal(ids, truth)
    np.testing.assert_allclose(scores, truth_scores, rtol=1e-5)
    users, items, truth = data
    graph = FaissFactoryIndex("HNSW8,SQ8", ef_construction=64, ef_search=64, locality_clusters=30).build(items)
    assert _recall(graph.search(users, K)[1], truth) >= 0.95 and graph.describe()["locality_clusters"] == 30


def test_bad_options_are_clear_errors(data):
    _, items, _ = data
    with pytest.raises(ConfigError, match="need an HNSW graph in the factory.*'IVF16,Flat' has none"):
        FaissFactoryIndex("IVF16,Flat", ef_construction=200)
    with pytest.raises(ConfigError, match="HNSW graph over the vectors.*quantizer_efSearch"):
        FaissFactoryIndex("IVF16_HNSW8,Flat", ef_search=64, train_size=None).build(items)
    with pytest.raises(ConfigError, match="k_factor needs a refine factory.*'HNSW8,SQ8'"):
        FaissFactoryIndex("HNSW8,SQ8", k_factor=2).build(items)
    with pytest.raises(ConfigError, match="either ef_search or efSearch"):
        FaissFactoryIndex("HNSW8,Flat", ef_search=64, search_params="efSearch=32")
    with pytest.raises(ConfigError, match="either k_factor or k_factor_rf"):
        FaissFactoryIndex("HNSW8,SQ8,RFlat", k_factor=2, search_params="k_factor_rf=4")
    with pytest.raises(ConfigError, match="k_factor must be a number >= 1"):
        FaissFactoryIndex("HNSW8,SQ8,RFlat", k_factor=0.5)
    with pytest.raises(ConfigError, match="ef_construction must be a positive integer"):
        FaissFactoryIndex("HNSW8,SQ8", ef_construction=0)
    with pytest.raises(ConfigError, match="locality_clusters wraps the index in an IDMap itself"):
        FaissFactoryIndex("IDMap,HNSW8,SQ8", locality_clusters=8)
    with pytest.raises(ConfigError, match="locality_clusters=5000 needs at least that many vectors, the corpus has"):
        FaissFactoryIndex("HNSW8,SQ8", locality_clusters=5000).build(items)
    # the evaluation callback's check before training says the same
    with pytest.raises(ConfigError, match="locality_clusters=5000 needs at least that many vectors, the corpus has"):
        FaissFactoryIndex("HNSW8,SQ8", locality_clusters=5000).check_corpus(len(items))
    with pytest.raises(ConfigError, match="trained on train_size=100 vectors"):
        FaissFactoryIndex("HNSW8,SQ8", locality_clusters=200, train_size=100).check_corpus(len(items))
