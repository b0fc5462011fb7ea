"""Export for serving: the exported retriever answers the test users exactly as the evaluation callback ranked
them, loads without the training config, keeps the configured index, and refuses unknown or unsafe files."""

from __future__ import annotations

import io
import json
import pickle
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_retrieval.cli import RetrievalCLI, main, prepare_registry
from lightning_retrieval.data.datamodule import RetrievalDataModule
from lightning_retrieval.errors import CheckpointError
from lightning_retrieval.registry import resolve
from lightning_retrieval.serving import ArtefactError, Retriever
from lightning_retrieval.serving.index_io import load_index, save_index
from lightning_retrieval.serving.manifest import MANIFEST_FILE, USER_STATE_FILE, ServingRequestError
from lightning_retrieval.tasks.base import RetrievalModel

K = 20
MLP = "{class_path: mlp, init_args: {hidden_dims: [32]}}"
TOWER = f"{{class_path: feature_crossing, init_args: {{crossing: {MLP}, output_dim: 16}}}}"
QUERIES = {
    "two_tower": "{class_path: single}",
    "multi_interest": "{class_path: interests, init_args: {serving_rule: log2, "
    "interests: {class_path: dcm, init_args: {num_interests: 4}}}}",
    "conditional": "{class_path: topic_conditions, init_args: {condition: {class_path: uniform_topic, init_args: "
    "{num_serving: 3}}}}",
}


CONDITIONAL_CALLBACK = f"""
    - class_path: conditional_evaluation
      init_args: {{ks: [{K}], filter: prefilter, result_card: false}}"""


def write_config(
    path: Path,
    queries: str,
    run_dir: Path,
    index: str = "{class_path: exact}",
    extra_callbacks: str = "",
    source: str = "{class_path: movielens}",
    extra_data: str = "",
    batches: int = 3,
) -> Path:
    """A tiny run on the embedded MovieLens (``source``), ``batches`` training batches; ``extra_data``: more
    ``data:`` lines."""
    path.write_text(
        f"""
seed_everything: 0
trainer:
  max_epochs: 1
  limit_train_batches: {batches}
  limit_val_batches: 0
  num_sanity_val_steps: 0
  logger: false
  default_root_dir: {run_dir}
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: retrieval_evaluation
      init_args: {{ks: [10, {K}], index: {index}, merger: {{class_path: round_robin}}, result_card: false}}\
{extra_callbacks}
model:
  class_path: retrieval
  init_args:
    embedding_dim: 16
    queries: {queries}
    user_tower: {TOWER}
    item_tower: {TOWER}
data:
  source: {source}
  max_history: 20
  batch_size: 256
  eval_batch_size: 512
{extra_data}"""
    )
    return path


def evaluator_lists(config: Path, ckpt: Path):
    """``lightning-retrieval test`` in-process: the retrieval callback's result (ranked lists and scores), the
    datamodule, and the conditional callback's metrics (if the config has one)."""
    from lightning_retrieval.callbacks.conditional_evaluation import ConditionalEvaluation
    from lightning_retrieval.callbacks.retrieval_evaluation import RetrievalEvaluation

    prepare_registry()
    args = ["test", "--config", str(config), "--ckpt_path", str(ckpt)]
    cli = RetrievalCLI(
        RetrievalModel, RetrievalDataModule, subclass_mode_model=True, save_config_kwargs={"overwrite": True}, args=args
    )
    result = next(c for c in cli.trainer.callbacks if isinstance(c, RetrievalEvaluation)).last_result
    conditional = next((c.last_metrics for c in cli.trainer.callbacks if isinstance(c, ConditionalEvaluation)), None)
    return result, cli.datamodule, conditional


def histories_of_test_users(datamodule):
    """Original item ids of each test user's history (everything before their first test interaction)."""
    data, es = datamodule.data, datamodule.evaluation_set("test")
    histories = [data.item_ids[data.item[data.user_offsets[u] : c]] for u, c in zip(es.users, es.cutoff)]
    return histories, list(data.user_ids[es.users])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """kind -> (retriever folder, evaluation result, datamodule, config, checkpoint); fit/test/export once."""
    cache = {}

    def get(kind: str):
        if kind not in cache:
            root = tmp_path_factory.mktemp(kind)
            extra = CONDITIONAL_CALLBACK if kind == "conditional" else ""
            config = write_config(root / "config.yaml", QUERIES[kind], root / "run", extra_callbacks=extra)
            main(["fit", "--config", str(config)])
            ckpt = next((root / "run").rglob("*.ckpt"))
            result, dm, conditional = evaluator_lists(config, ckpt)
            out = root / "retriever"
            main(["export", "--config", str(config), "--ckpt_path", str(ckpt), "--output", str(out)])
            cache[kind] = (out, result, dm, config, ckpt, conditional)
        return cache[kind]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["two_tower", "multi_interest", "conditional"])
def test_exported_top_k_equals_evaluation_top_k(exported, kind, tmp_path):
    out, result, dm, _, _, _ = exported(kind)
    moved = tmp_path / "served"  # loads without the training config (and from another place)
    shutil.copytree(out, moved)
    retriever = Retriever.load(moved)
    histories, users = histories_of_test_users(dm)
    recs = retriever.recommend(histories, K, user_features={"user_id": users})
    lists = result.lists
    assert lists.valid.all() and len(histories) == 610
    np.testing.assert_array_equal(recs.item_rows, lists.items[:, :K])
    np.testing.assert_allclose(recs.scores, result.scores[:, :K], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(recs.item_ids, dm.data.item_ids[lists.items[:, :K]])  # original ids
    assert len({tuple(r) for r in recs.item_rows}) > 100  # personalised lists, not one list for everyone
    assert not recs.anonymous.any()
    seen = {(u, i) for u, h in enumerate(histories) for i in h}
    assert not any((u, i) in seen for u, row in enumerate(recs.item_ids) for i in row)
    manifest = json.loads((moved / MANIFEST_FILE).read_text())
    assert manifest["index"]["type"] == "exact" and manifest["merger"]["type"] == "round_robin"
    assert manifest["corpus_size"] == dm.data.num_items and manifest["embedding_dim"] == 16
    if kind == "multi_interest":
        assert manifest["serving_rule"] == "log2"
        batch, _ = retriever.user_batch(histories[:64], {"user_id": users[:64]})
        _, valid, _ = retriever.user_side.queries(batch)
        assert valid.shape[1] == 4 and (valid.sum(1) > 1).any()  # several queries merged for some users


@pytest.mark.slow
def test_topic_requests_equal_the_conditional_evaluation(exported):
    """(user, topic) queries of the conditional callback (topics of each test user's targets, prefilter): the
    exported retriever's lists give the callback's conditional recall and NDCG."""
    from lightning_retrieval.callbacks.conditional_evaluation import condition_queries
    from lightning_retrieval.metrics.base import RankedLists
    from lightning_retrieval.metrics.library import NDCG, Recall

    out, _, dm, _, _, conditional = exported("conditional")
    retriever = Retriever.load(out)
    assert retriever.manifest["topic_filter"]["mode"] == "prefilter"
    es = dm.evaluation_set("test")
    rows, topics, q_targets = condition_queries(es.targets, dm.data.item_topics, dm.data.num_topics)
    histories, users = histories_of_test_users(dm)
    recs = retriever.recommend(
        [histories[r] for r in rows],
        K,
        topics=list(dm.data.topic_names[topics]),
        user_features={"user_id": [users[r] for r in rows]},
    )
    n = dm.data.num_items
    hits = np.isin(np.arange(len(rows))[:, None] * n + recs.item_rows, q_targets.keys(n)) & recs.found
    lists = RankedLists(recs.item_rows, hits, q_targets.lengths, np.ones(len(rows), dtype=bool), n)
    assert len(rows) > 1000 and hits.any()
    for metric in (Recall(), NDCG()):
        value = float(np.nanmean(metric.compute(lists, K)))
        assert value == pytest.approx(conditional[f"cond_{metric.name}@{K}"], abs=1e-9)


@pytest.mark.slow
def test_hnsw_export_overlap_with_exact(exported, tmp_path):
    out, _, dm, _, ckpt, _ = exported("two_tower")
    hnsw_config = write_config(
        tmp_path / "hnsw.yaml", QUERIES["two_tower"], tmp_path / "run", "{class_path: hnsw, init_args: {ef_search: 64}}"
    )
    main(["export", "--config", str(hnsw_config), "--ckpt_path", str(ckpt), "--output", str(tmp_path / "hnsw")])
    exact, hnsw = Retriever.load(out), Retriever.load(tmp_path / "hnsw")
    assert hnsw.manifest["index"]["type"] == "hnsw" and hnsw.index.ef_search == 64
    histories, users = histories_of_test_users(dm)
    a = exact.recommend(histories, K, user_features={"user_id": users}).item_rows
    b = hnsw.recommend(histories, K, user_features={"user_id": users}).item_rows
    overlap = np.mean([len(set(x) & set(y)) / K for x, y in zip(a, b)])
    print(f"HNSW (m=32, ef_search=64) overlap@{K} with exact on {len(a)} test users: {overlap:.4f}")
    assert overlap > 0.9


@pytest.mark.parametrize(
    "name,args",
    [
        ("exact", {}),
        ("exact_torch", {}),
        ("hnsw", {"m": 16, "ef_search": 32}),
        ("ivfpq", {"nlist": 16, "pq_m": 4}),
        ("faiss_factory", {"factory": "IVF16,PQ4", "search_params": "nprobe=3"}),
    ],
)
def test_saved_index_answers_like_the_built_one(tmp_path, name, args):
    from lightning_retrieval.registry import resolve

    prepare_registry()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 16)).astype(np.float32)
    queries = rng.normal(size=(50, 16)).astype(np.float32)
    built = resolve("index", name)(**args, use_gpu=False).build(vectors)
    entry = save_index(built, tmp_path, np.arange(len(vectors)))
    assert (entry["file"] is None) == (name == "exact_torch")  # FAISS indexes are written, exact_torch rebuilt
    loaded = load_index(tmp_path, json.loads(json.dumps(entry)), vectors)
    assert type(loaded) is type(built) and loaded.describe()["index"] == name
    s1, i1 = built.search(queries, 10)
    s2, i2 = loaded.search(queries, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, rtol=1e-6)


def test_subset_index_answers_with_catalogue_rows(tmp_path):
    from lightning_retrieval.retrieval.corpus import SubsetIndex
    from lightning_retrieval.retrieval.index import ExactIndex

    vectors = np.random.default_rng(1).normal(size=(300, 8)).astype(np.float32)
    corpus = np.arange(0, 300, 3)
    save_index(ExactIndex(use_gpu=False).build(vectors[corpus]), tmp_path, corpus)
    loaded = load_index(tmp_path, {"type": "exact", "init_args": {}, "file": "index.faiss", "exact": True}, vectors)
    assert isinstance(loaded, SubsetIndex) and loaded.size == 100
    _, ids = loaded.search(vectors[:5], 7)
    assert np.isin(ids, corpus).all()
    expected = corpus[np.argsort(-(vectors[:5] @ vectors[corpus].T), axis=1)[:, :7]]
    np.testing.assert_array_equal(ids, expected)


@pytest.mark.slow
@pytest.mark.parametrize(
    "edit,field",
    [
        (lambda m: m.update(format_version=99), "format_version"),
        (lambda m: m.update(format="someone-else/model"), "format"),
        (lambda m: m.pop("merger"), "merger"),
        (lambda m: m.update(embedding_dim="16"), "embedding_dim"),
        (lambda m: m["index"].pop("type"), "index.type"),
    ],
)
def test_manifest_it_does_not_understand_is_refused(exported, tmp_path, edit, field):
    out = shutil.copytree(exported("two_tower")[0], tmp_path / "r")
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    edit(manifest)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ArtefactError, match=f"field '{field}'"):
        Retriever.load(out)


@pytest.mark.slow
def test_missing_or_garbled_manifest_is_refused(exported, tmp_path):
    out = shutil.copytree(exported("two_tower")[0], tmp_path / "r")
    (out / MANIFEST_FILE).write_text('{"format": "lightning-retrieval/retriever", "format_ver')
    with pytest.raises(ArtefactError, match="not valid JSON"):
        Retriever.load(out)
    (out / MANIFEST_FILE).unlink()
    with pytest.raises(ArtefactError, match="manifest.json is missing"):
        Retriever.load(out)


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(_Payload.marker),))


@pytest.mark.slow
def test_state_file_with_a_pickle_payload_is_refused(exported, tmp_path):
    out = shutil.copytree(exported("two_tower")[0], tmp_path / "r")
    _Payload.marker = str(tmp_path / "code_ran")
    state = torch.load(out / USER_STATE_FILE, weights_only=True)
    state["payload"] = _Payload()
    torch.save(state, out / USER_STATE_FILE, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(CheckpointError, match="refusing to load"):
        Retriever.load(out)
    assert not (tmp_path / "code_ran").exists()


@pytest.mark.slow
def test_requests_topics_seen_items_and_cli(exported):
    out, _, dm, _, _, _ = exported("two_tower")
    retriever = Retriever.load(out)
    history = list(dm.data.item_ids[:30])
    # seen-item exclusion = the unfiltered ranking without the history items
    ranked = retriever.recommend([history], 10 + len(history), exclude_seen=False).item_ids[0]
    unseen = retriever.recommend([history], 10).item_ids[0]
    assert unseen.tolist() == [i for i in ranked if i not in set(history)][:10]
    # a user unknown to the model is served (and flagged) as the anonymous user, like one without user_id
    known = retriever.recommend([history], 10, user_features={"user_id": [dm.data.user_ids[0]]})
    unknown = retriever.recommend([history], 10, user_features={"user_id": [-12345]})
    assert not known.anonymous[0] and unknown.anonymous[0]
    assert unknown.item_ids.tolist() == retriever.recommend([history], 10).item_ids.tolist()
    assert known.item_ids.tolist() != unknown.item_ids.tolist()
    # topic requests: the default filter (prefilter) returns only items of the topic, best first
    recs = retriever.recommend([history, history[:5]], 10, topics="Comedy")
    topics_of = dict(zip(retriever.item_ids, _item_topics(retriever)))
    assert all("Comedy" in topics_of[i] for i in recs.item_ids[recs.found])
    assert (np.diff(recs.scores, axis=1) <= 1e-6).all()
    with pytest.raises(ServingRequestError, match="unknown topic"):
        retriever.recommend([history], 10, topics="Comdy")
    with pytest.raises(ServingRequestError, match=r"unknown item id\(s\) \[-5\]"):
        retriever.recommend([[*history[:3], -5]], 10)
    # the CLI answers as the API does (anonymous user)
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        main(["recommend", str(out), "--user-history", ",".join(map(str, history)), "--k", "10", "--json"])
    printed = json.loads(buffer.getvalue().strip().splitlines()[-1])
    assert printed["anonymous"] is True
    assert [item["item_id"] for item in printed["items"]] == retriever.recommend([history], 10).item_ids[0].tolist()


def _item_topics(retriever):
    names = retriever.topic_names
    return [{names[t] for t in retriever.item_topics.row(r)} for r in range(len(retriever.item_ids))]


@pytest.mark.parametrize("source", ["movielens", "synthetic_crosses"])
def test_request_batch_equals_the_evaluation_batch(tmp_path, source):
    """What the exported user side feeds the model for (history, user id) is the evaluation's batch, key by key
    (history window, lengths, topic counts, dense features, user side features)."""
    from lightning_retrieval.registry import resolve
    from lightning_retrieval.serving import export_retriever
    from lightning_retrieval.serving.user_side import build_model

    prepare_registry()
    args = {"num_users": 300, "num_items": 400} if source == "synthetic_crosses" else {}
    dm = RetrievalDataModule(source=resolve("datasets", source)(**args), max_history=8)
    dm.setup("test")
    config = {"class_path": "retrieval", "init_args": {"feature_spec": dm.feature_spec, "embedding_dim": 8}}
    retriever = Retriever.load(export_retriever(build_model(config), dm, tmp_path / "r", config))
    es = dm.evaluation_set("test")
    rows = np.arange(0, len(es), 7)
    histories, users = histories_of_test_users(dm)
    got, _ = retriever.user_batch([histories[r] for r in rows], {"user_id": [users[r] for r in rows]})
    expected = dm.builder_for("test").user_features(torch.from_numpy(es.users[rows]), torch.from_numpy(es.cutoff[rows]))
    assert set(got) == set(expected)
    if source == "synthetic_crosses":
        assert any(k.startswith("user_feature_") for k in got)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


@pytest.mark.slow
def test_export_refuses_a_checkpoint_of_another_model(exported, tmp_path):
    from lightning_retrieval.serving import export_from_config

    _, _, _, _, two_tower_ckpt, _ = exported("two_tower")
    _, _, _, dcm_config, _, _ = exported("multi_interest")
    with pytest.raises(CheckpointError, match="does not match the configured model"):
        export_from_config([str(dcm_config)], str(two_tower_ckpt), tmp_path / "r")
    assert not (tmp_path / "r" / MANIFEST_FILE).exists()


@pytest.mark.slow
def test_routing_mass_budget_serves_like_the_evaluation(exported, tmp_path):
    """A multi-interest export served with the ``weighted_budget`` merger gets the model's query weights (DCM's
    routing mass) and answers exactly as the evaluation with that merger on the same checkpoint."""
    out, _, dm, config, ckpt, _ = exported("multi_interest")
    budget_config = tmp_path / "budget.yaml"
    budget_config.write_text(config.read_text().replace("class_path: round_robin", "class_path: weighted_budget"))
    result, _, _ = evaluator_lists(budget_config, ckpt)
    retriever = Retriever.load(out)
    retriever.merger = resolve("mergers", "weighted_budget")()
    histories, users = histories_of_test_users(dm)
    recs = retriever.recommend(histories, K, user_features={"user_id": users})
    np.testing.assert_array_equal(recs.item_rows, result.lists.items[:, :K])
    round_robin = Retriever.load(out).recommend(histories, K, user_features={"user_id": users})
    assert (recs.item_rows != round_robin.item_rows).any(1).mean() > 0.05  # the weights change the lists
