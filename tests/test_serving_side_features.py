"""Serving requests carry user side features: raw values are encoded with the training coding (vocabulary or
hashing, the reserved unknown id otherwise), replace the stored values, and change the served queries."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import numpy as np
import pandas as pd
import pytest
import torch

from lightning_retrieval.cli import main, prepare_registry
from lightning_retrieval.data.features import UNKNOWN
from lightning_retrieval.serving import Retriever
from lightning_retrieval.serving.manifest import MANIFEST_FILE, ServingRequestError


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(retriever, datamodule, users table): an untrained retrieval model on a small interactions file with a
    categorical (``lang``), a multi-valued (``follows``) and a hashed (``city``) user side feature, exported."""
    from lightning_retrieval.data.datamodule import RetrievalDataModule
    from lightning_retrieval.data.sources import InteractionsFileSource
    from lightning_retrieval.serving import export_retriever
    from lightning_retrieval.serving.user_side import build_model

    prepare_registry()
    root = tmp_path_factory.mktemp("side")
    rng = np.random.default_rng(0)
    users = pd.DataFrame(
        {
            "uid": np.arange(30),
            "lang": rng.choice(["en", "fr", "de"], 30),
            "follows": [["a|b", "b", "", "c|a"][i % 4] for i in range(30)],
            "city": [f"city{i % 7}" for i in range(30)],
        }
    )
    users.loc[5, "lang"] = None
    inter = pd.DataFrame({"uid": np.repeat(np.arange(30), 6), "iid": rng.integers(40, size=180), "ts": 0})
    inter["ts"] = np.tile(np.arange(6), 30)
    users.to_parquet(root / "users.parquet")
    inter.to_parquet(root / "inter.parquet")
    source = InteractionsFileSource(
        str(root / "inter.parquet"),
        users_path=str(root / "users.parquet"),
        user_column="uid",
        item_column="iid",
        timestamp_column="ts",
        user_categorical_columns=["lang", "city"],
        user_multi_valued_columns=["follows"],
        hash_buckets={"city": 5},
    )
    dm = RetrievalDataModule(source, max_history=4, batch_size=16, eval_batch_size=16)
    dm.setup("test")
    config = {"class_path": "retrieval", "init_args": {"feature_spec": dm.feature_spec, "embedding_dim": 8}}
    torch.manual_seed(0)
    folder = export_retriever(build_model(config), dm, root / "retriever", config)
    return Retriever.load(folder), dm, users


def _values(users: pd.DataFrame, ids, column: str) -> list:
    return users.set_index("uid").loc[list(ids), column].tolist()


def test_given_values_encode_exactly_as_the_stored_training_values(served):
    retriever, dm, users = served
    ids = list(dm.data.user_ids)
    histories = [[]] * len(ids)
    stored, _ = retriever.user_batch(histories, {"user_id": ids})
    given = {name: _values(users, ids, name) for name in ("lang", "follows", "city")}
    # the raw values of the users table, sent with the request, give the bags the training data gave them
    sent, _ = retriever.user_batch(histories, {"user_id": ids, **given})
    assert retriever.user_side_features == ["lang", "city", "follows"]
    assert set(sent) == set(stored)
    for key in stored:
        assert torch.equal(sent[key], stored[key]), key
    # and they are the datamodule's own ids (not trivially the same zero bags)
    assert torch.equal(stored["user_feature_lang"], torch.as_tensor(dm.side_features.users["lang"].ids.values))
    assert (stored["user_feature_lang"] > UNKNOWN).sum() == len(ids) - 1  # user 5 has no language


def test_anonymous_requests_with_side_features_are_encoded_and_change_the_queries(served):
    retriever, dm, _ = served
    lang = dm.side_features.users["lang"].vocabulary.tolist()
    follows = dm.side_features.users["follows"].vocabulary.tolist()
    request = {
        "lang": ["fr", "en", "klingon", None],
        "follows": [["a", "b"], "b|a", "zz", ""],
        "city": ["city3", "city3", "nowhere", None],
    }
    batch, _ = retriever.user_batch([[]] * 4, request)
    assert batch["user_feature_lang"].tolist() == [1 + lang.index("fr"), 1 + lang.index("en"), UNKNOWN, UNKNOWN]
    ab = sorted([1 + follows.index("a"), 1 + follows.index("b")])
    assert batch["user_feature_follows_lengths"].tolist() == [2, 2, 1, 1]
    assert batch["user_feature_follows"].tolist() == [*ab, *ab, UNKNOWN, UNKNOWN]  # list or joined text alike
    # hashed: the training bucket of the same text; a new text hashes into some bucket (never an error)
    city3 = dm.side_features.users["city"].ids.row(int(np.flatnonzero(dm.data.user_ids == 3)[0])).tolist()
    assert batch["user_feature_city"][:2].tolist() == city3 * 2
    assert batch["user_feature_city"][3].item() == UNKNOWN
    vectors, _, _ = retriever.user_side.queries(batch)
    assert not np.allclose(vectors[0], vectors[1])  # only the language differs
    default, _, _ = retriever.user_side.queries(retriever.user_batch([[]], {})[0])
    unknown, _, _ = retriever.user_side.queries(retriever.user_batch([[]], {"lang": [None], "follows": [None]})[0])
    np.testing.assert_allclose(unknown[0], default[0], atol=1e-6)  # missing = what an anonymous user gets
    recs_fr = retriever.recommend([[]], 10, user_features={"lang": ["fr"]})
    recs_en = retriever.recommend([[]], 10, user_features={"lang": ["en"]})
    assert not np.allclose(recs_fr.scores, recs_en.scores)


def test_bad_side_feature_requests_name_the_problem(served):
    retriever, _, _ = served
    with pytest.raises(ServingRequestError, match=r"unknown user_features \['langs'\]; use .*lang, city, follows"):
        retriever.user_batch([[]], {"langs": ["fr"]})
    with pytest.raises(ServingRequestError, match=r"user_features\['lang'\] has 2 rows for 1 histories"):
        retriever.user_batch([[]], {"lang": ["fr", "en"]})
    with pytest.raises(ServingRequestError, match=r"user_features\['lang'\].*'lang' holds lists"):
        retriever.user_batch([[]], {"lang": [["fr", "en"]]})


def test_cli_user_feature_answers_as_the_api(served):
    retriever, _, _ = served
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        main(["recommend", str(retriever.folder), "--user-history", "", "--user-feature", "follows=c|a",
              "--user-feature", "lang=de", "--k", "5", "--json"])  # fmt: skip
    printed = json.loads(buffer.getvalue().strip().splitlines()[-1])
    expected = retriever.recommend([[]], 5, user_features={"lang": ["de"], "follows": ["c|a"]})
    assert [item["item_id"] for item in printed["items"]] == expected.item_ids[0].tolist()
    other = retriever.recommend([[]], 5, user_features={"lang": ["en"], "follows": ["b"]})
    assert not np.allclose(other.scores, expected.scores)


def test_a_folder_without_the_coding_refuses_side_feature_values_but_serves(served, tmp_path):
    import shutil

    retriever, _, _ = served
    old = tmp_path / "old"
    shutil.copytree(retriever.folder, old)
    manifest = json.loads((old / MANIFEST_FILE).read_text())
    del manifest["user_side_feature_coding"]
    (old / MANIFEST_FILE).write_text(json.dumps(manifest))
    loaded = Retriever.load(old)
    assert loaded.recommend([[]], 5).found.all()
    with pytest.raises(ServingRequestError, match="no coding for the feature.*export it again"):
        loaded.user_batch([[]], {"lang": ["fr"]})
