"""Serving a model whose interests cluster the history's item-tower vectors (``history_space: items``): the export
stores the item tower's inputs, request batches carry the history items' features, and the retriever answers the
test users exactly as the evaluation ranked them; ``combined`` forwards ``history_space`` to its interests."""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from test_export import K, evaluator_lists, histories_of_test_users
from test_export import write_config as write_export_config

from lightning_retrieval.cli import main, prepare_registry
from lightning_retrieval.data.datamodule import RetrievalDataModule
from lightning_retrieval.queries.combined import CombinedQueries
from lightning_retrieval.serving import ArtefactError, Retriever
from lightning_retrieval.serving.manifest import ITEMS_FILE, MANIFEST_FILE

DCM_ITEMS = (
    "{class_path: interests, init_args: {serving_rule: log2, history_field: keep, history_space: items, "
    "interests: {class_path: dcm, init_args: {num_interests: 4, centroid_scale: unit}}}}"
)
COMBINED_ITEMS = (
    "{class_path: combined, init_args: {history_space: items, interests: {class_path: dcm, init_args: "
    "{num_interests: 3}}, condition: {class_path: uniform_topic, init_args: {num_serving: 2}}}}"
)


def write_config(path: Path, queries: str, run_dir: Path, history_item_features: bool = True, batches: int = 3):
    """A tiny run on the embedded MovieLens with its item side features (decade, tags: stored bags in the export)."""
    return write_export_config(
        path,
        queries,
        run_dir,
        source="{class_path: movielens, init_args: {item_side_features: true}}",
        extra_data=f"  history_item_features: {str(history_item_features).lower()}\n",
        batches=batches,
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(retriever folder, evaluation result, datamodule): a DCM over item-tower vectors, fit, tested, exported."""
    root = tmp_path_factory.mktemp("history_items")
    config = write_config(root / "config.yaml", DCM_ITEMS, root / "run")
    main(["fit", "--config", str(config)])
    ckpt = next((root / "run").rglob("*.ckpt"))
    result, dm, _ = evaluator_lists(config, ckpt)
    out = root / "retriever"
    main(["export", "--config", str(config), "--ckpt_path", str(ckpt), "--output", str(out)])
    return out, result, dm


def test_history_items_export_answers_exactly_as_the_evaluation(exported, tmp_path):
    out, result, dm = exported
    moved = tmp_path / "served"  # loads without the training config
    shutil.copytree(out, moved)
    retriever = Retriever.load(moved)
    histories, users = histories_of_test_users(dm)
    recs = retriever.recommend(histories, K, user_features={"user_id": users})
    assert result.lists.valid.all() and len(histories) == 610
    np.testing.assert_array_equal(recs.item_rows, result.lists.items[:, :K])
    np.testing.assert_allclose(recs.scores, result.scores[:, :K], rtol=1e-5, atol=1e-6)
    manifest = json.loads((moved / MANIFEST_FILE).read_text())
    assert manifest["history_item_features"] is True
    assert sorted(manifest["item_side_features"]) == ["decade", "tags"]
    # several interests merged for some users: the interests (not one pooled query) make the lists
    batch, _ = retriever.user_batch(histories[:64], {"user_id": users[:64]})
    _, valid, _ = retriever.user_side.queries(batch)
    assert (valid.sum(1) > 1).any()


def test_request_batches_carry_the_evaluations_history_item_features(exported):
    """Per user, the served batch's ``history_item*`` tensors (ids, topics, dense, side-feature bags, positions)
    equal those the test batch builder gives the evaluation."""
    out, _, dm = exported
    retriever = Retriever.load(out)
    es, data = dm.evaluation_set("test"), dm.data
    builder = dm.builder_for("test")
    checked = 0
    for u, c in list(zip(es.users, es.cutoff))[:40:7]:
        expected = builder.user_features(torch.tensor([u]), torch.tensor([c]))
        history = data.item_ids[data.item[data.user_offsets[u] : c]]
        served, _ = retriever.user_batch([history], {"user_id": [data.user_ids[u]]})
        keys = sorted(k for k in expected if k.startswith("history_item"))
        assert {"history_item", "history_item_index", "history_item_feature_tags"} <= set(keys)
        assert keys == sorted(k for k in served if k.startswith("history_item"))
        for key in keys:
            torch.testing.assert_close(served[key], expected[key], rtol=0, atol=0, msg=key)
        checked += 1
    assert checked == 6


def test_cli_recommend_agrees_with_the_api(exported):
    out, _, dm = exported
    retriever = Retriever.load(out)
    data, es = dm.data, dm.evaluation_set("test")
    for u, c in list(zip(es.users, es.cutoff))[:3]:
        history = data.item_ids[data.item[data.user_offsets[u] : c]]
        user_id = data.user_ids[u]
        buffer = io.StringIO()
        with redirect_stdout(buffer):
            main(["recommend", str(out), "--user-history", ",".join(map(str, history)), "--user-id", str(user_id),
                  "--k", "10", "--json"])  # fmt: skip
        printed = json.loads(buffer.getvalue().strip().splitlines()[-1])
        expected = retriever.recommend([history], 10, user_features={"user_id": [user_id]})
        assert [item["item_id"] for item in printed["items"]] == expected.item_ids[0].tolist()
        assert not printed["anonymous"]


def test_folder_without_item_inputs_is_refused_by_name(exported, tmp_path):
    """A history_space: items model in a folder without the item inputs (written before they were exported) is
    refused at load with the remedy, not a KeyError at the first request."""
    out, _, _ = exported
    old = tmp_path / "old"
    shutil.copytree(out, old)
    manifest = json.loads((old / MANIFEST_FILE).read_text())
    del manifest["history_item_features"], manifest["item_side_features"]
    (old / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ArtefactError, match="history_space: items.*export it again"):
        Retriever.load(old)
    items = pq.read_table(out / ITEMS_FILE)
    pq.write_table(items.drop(["dense"]), old / ITEMS_FILE)
    manifest["history_item_features"] = True
    (old / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ArtefactError, match="lacks column 'dense'"):
        Retriever.load(old)


@pytest.fixture(scope="module")
def file_export(tmp_path_factory):
    """(retriever, datamodule, model): an untrained DCM over item-tower vectors on a small interactions file whose
    items have dense columns, a categorical and a multi-valued side feature, exported without a checkpoint."""
    import pandas as pd

    from lightning_retrieval.data.sources import InteractionsFileSource
    from lightning_retrieval.serving import export_retriever
    from lightning_retrieval.serving.user_side import build_model

    prepare_registry()
    root = tmp_path_factory.mktemp("file_items")
    rng = np.random.default_rng(0)
    items = pd.DataFrame(
        {
            "iid": np.arange(40),
            "price": rng.normal(size=40),
            "weight": rng.normal(size=40),
            "brand": rng.choice(["a", "b", "c", "d"], 40),
            "labels": [["x|y", "y", "", "z|x"][i % 4] for i in range(40)],
        }
    )
    inter = pd.DataFrame({"uid": np.repeat(np.arange(30), 8), "iid": rng.integers(40, size=240)})
    inter["ts"] = np.tile(np.arange(8), 30)
    items.to_parquet(root / "items.parquet")
    inter.to_parquet(root / "inter.parquet")
    source = InteractionsFileSource(
        str(root / "inter.parquet"),
        items_path=str(root / "items.parquet"),
        user_column="uid",
        item_column="iid",
        timestamp_column="ts",
        item_feature_columns=["price", "weight"],
        item_categorical_columns=["brand"],
        item_multi_valued_columns=["labels"],
    )
    dm = RetrievalDataModule(source, max_history=5, batch_size=16, eval_batch_size=16, history_item_features=True)
    dm.setup("test")
    queries = {
        "class_path": "interests",
        "init_args": {"history_space": "items", "serving_rule": "all", "interests": {"class_path": "dcm"}},
    }
    config = {
        "class_path": "retrieval",
        "init_args": {"feature_spec": dm.feature_spec, "embedding_dim": 64, "queries": queries},  # default towers: 64
    }
    torch.manual_seed(0)
    model = build_model(config).eval()
    folder = export_retriever(model, dm, root / "retriever", config)
    return Retriever.load(folder), dm, model


def test_served_queries_use_the_items_dense_and_side_features(file_export):
    """Every test user's served batch carries the builder's history item features (dense columns and both side
    features included), and the served queries equal the model's on the builder's batch."""
    retriever, dm, model = file_export
    assert dm.data.item_dense.shape[1] == 2 and sorted(retriever.manifest["item_side_features"]) == ["brand", "labels"]
    es = dm.evaluation_set("test")
    histories, users = histories_of_test_users(dm)
    served, _ = retriever.user_batch(histories, {"user_id": users})
    expected = dm.builder_for("test").user_features(torch.from_numpy(es.users), torch.from_numpy(es.cutoff))
    keys = sorted(k for k in expected if k.startswith("history_item"))
    assert "history_item_dense" in keys and "history_item_feature_labels_lengths" in keys
    assert keys == sorted(k for k in served if k.startswith("history_item"))
    for key in keys:
        torch.testing.assert_close(served[key], expected[key], rtol=0, atol=0, msg=key)
    vectors, valid, _ = retriever.user_side.queries(served)
    with torch.no_grad():
        queries = model.embed_users(expected)
    np.testing.assert_array_equal(valid, queries.valid.numpy())
    np.testing.assert_allclose(vectors, queries.vectors.numpy(), rtol=1e-5, atol=1e-6)
    shifted, _ = retriever.user_batch(histories, {"user_id": users})
    shifted["history_item_dense"] = shifted["history_item_dense"] + 1.0  # the dense columns reach the queries
    assert not np.allclose(retriever.user_side.queries(shifted)[0], vectors)


def test_combined_forwards_history_space():
    spec = {"num_topics": 5}
    assert CombinedQueries(16, spec, history_space="items").implicit.history_space == "items"
    assert CombinedQueries(16, spec).implicit.history_space == "ids"
    with pytest.raises(ValueError, match="history_space must be 'ids' or 'items'"):
        CombinedQueries(16, spec, history_space="vectors")


def test_combined_with_history_space_items_trains(tmp_path):
    """One training step of a ``combined`` config with ``history_space: items``; without the history items'
    features in the batches it stops with the error naming the data flag (so the option reached the interests)."""
    config = write_config(tmp_path / "combined.yaml", COMBINED_ITEMS, tmp_path / "run", batches=1)
    main(["fit", "--config", str(config)])
    assert list((tmp_path / "run").rglob("*.ckpt"))
    bare = write_config(tmp_path / "bare.yaml", COMBINED_ITEMS, tmp_path / "bare", history_item_features=False)
    with pytest.raises(KeyError, match="data.history_item_features: true"):
        main(["fit", "--config", str(bare)])
