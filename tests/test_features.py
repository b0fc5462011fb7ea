"""Side features: vocabularies with a reserved id for unknown/missing values, stable hashing, bags per batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lightning_retrieval.data.features import (
    UNKNOWN,
    SideFeatureBags,
    SideFeatureSpec,
    encode_side_feature,
    encode_side_features,
    stable_hash,
)
from lightning_retrieval.data.schema import DataValidationError
from lightning_retrieval.errors import ConfigError


def _rows(feature) -> list[list[int]]:
    return [feature.ids.row(r).tolist() for r in range(feature.ids.num_rows)]


@pytest.fixture
def users() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [10, 11, 12, 13],
            "occupation": ["nurse", "pilot", None, "baker"],
            "age": [25.0, np.nan, 35.0, 25.0],  # an int column with a hole: read as "25", "35"
            "languages": [["en", "fr"], "de|en", [], "  "],
        }
    )


def test_unknown_and_missing_values_map_to_the_reserved_id(users):
    # user 13 ("baker") is not a training row, user 99 is absent from the table
    ids = np.array([10, 11, 12, 13, 99])
    fit = np.array([True, True, True, False, True])
    f = encode_side_feature(users, "user_id", ids, SideFeatureSpec("occupation"), fit_rows=fit, table_name="users")
    assert f.vocabulary.tolist() == ["nurse", "pilot"]
    assert _rows(f) == [[1], [2], [UNKNOWN], [UNKNOWN], [UNKNOWN]]  # missing, unknown, absent: one id-0 bag each
    assert f.num_embeddings == 3
    assert f.report["rows_missing"] == 2 and f.report["values_unknown"] == 1
    assert "1 unknown value(s)" in f.report_line() and "2 row(s) without a value" in f.report_line()


def test_integral_float_columns_are_read_as_integers(users):
    f = encode_side_feature(users, "user_id", np.array([10, 11, 12]), SideFeatureSpec("age"))
    assert f.vocabulary.tolist() == ["25", "35"]
    assert _rows(f) == [[1], [UNKNOWN], [2]]


def test_multi_valued_lists_and_joined_text_become_bags(users):
    ids = np.array([10, 11, 12, 13])
    f = encode_side_feature(users, "user_id", ids, SideFeatureSpec("languages", multi_valued=True))
    assert f.vocabulary.tolist() == ["de", "en", "fr"]
    assert _rows(f) == [[2, 3], [1, 2], [UNKNOWN], [UNKNOWN]]  # empty list and blank text: the reserved id


def test_min_count_sends_rare_values_to_the_reserved_id():
    table = pd.DataFrame({"item_id": [1, 2, 3], "tags": ["a|b", "a", "a|c"]})
    f = encode_side_feature(table, "item_id", np.array([1, 2, 3]), SideFeatureSpec("tags", True, min_count=2))
    assert f.vocabulary.tolist() == ["a"]
    assert _rows(f) == [[UNKNOWN, 1], [1], [UNKNOWN, 1]]


def test_hashing_is_deterministic_across_processes_and_reports_collisions():
    values = np.array([f"tag{i}" for i in range(50)], dtype=object)
    here = (stable_hash(values) % np.uint64(1000)).tolist()
    code = (
        "import numpy as np; from lightning_retrieval.data.features import stable_hash;"
        "v = np.array([f'tag{i}' for i in range(50)], dtype=object);"
        "print((stable_hash(v) % np.uint64(1000)).tolist())"
    )
    for salt in ("1", "2"):  # Python's hash() would differ between these two processes
        env = {**os.environ, "PYTHONHASHSEED": salt}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert eval(out.stdout) == here  # noqa: S307 - our own printed list
    table = pd.DataFrame({"item_id": np.arange(50), "tag": values})
    one_bucket = encode_side_feature(table, "item_id", np.arange(50), SideFeatureSpec("tag", hash_buckets=1))
    assert one_bucket.num_embeddings == 2 and set(one_bucket.ids.values.tolist()) == {1}
    assert one_bucket.report["collision_rate"] == 1.0
    wide = encode_side_feature(table, "item_id", np.arange(50), SideFeatureSpec("tag", hash_buckets=1_000_000))
    assert wide.report["collision_rate"] == 0.0 and wide.vocabulary is None
    assert (wide.ids.values - 1).tolist() == (stable_hash(values) % np.uint64(1_000_000)).astype(np.int64).tolist()


def test_hashing_keeps_the_reserved_id_for_missing_values():
    table = pd.DataFrame({"item_id": [1, 2], "tag": ["x", None]})
    f = encode_side_feature(table, "item_id", np.array([1, 2]), SideFeatureSpec("tag", hash_buckets=4))
    assert _rows(f)[1] == [UNKNOWN] and _rows(f)[0][0] >= 1


def test_validation_errors_name_the_column(users):
    ids = np.array([10, 11])
    with pytest.raises(DataValidationError, match="'jobs' not found"):
        encode_side_feature(users, "user_id", ids, SideFeatureSpec("jobs"), table_name="users")
    with pytest.raises(DataValidationError, match="'languages' holds lists.*multi-valued"):
        encode_side_feature(users, "user_id", ids, SideFeatureSpec("languages"), table_name="users")
    doubled = pd.concat([users, users.iloc[:1]])
    with pytest.raises(DataValidationError, match="'occupation': duplicated user_id values \\[10\\]"):
        encode_side_feature(doubled, "user_id", ids, SideFeatureSpec("occupation"), table_name="users")
    with pytest.raises(DataValidationError, match="'occupation': none of the 2 ids is in the table's user_id"):
        encode_side_feature(users, "user_id", np.array(["10", "11"]), SideFeatureSpec("occupation"), table_name="users")
    with pytest.raises(ConfigError, match="'age'.*hash_buckets"):
        SideFeatureSpec("age", hash_buckets=0)
    with pytest.raises(ConfigError, match="'age band'.*letters"):
        SideFeatureSpec("age band")
    with pytest.raises(ConfigError, match=r"\['age'\] are given more than once"):
        encode_side_features(users, "user_id", ids, [SideFeatureSpec("age"), SideFeatureSpec("occupation", name="age")])
    with pytest.raises(DataValidationError, match=r"\['age'\] need a users table"):
        encode_side_features(None, "user_id", ids, [SideFeatureSpec("age")], table_name="users")


def test_bags_gather_the_rows_of_a_batch(users):
    ids = np.array([10, 11, 12, 13])
    f = encode_side_feature(users, "user_id", ids, SideFeatureSpec("languages", multi_valued=True))
    batch = SideFeatureBags({"languages": f})(torch.tensor([3, 0, 1]), "user")
    assert batch["user_feature_languages"].tolist() == [UNKNOWN, 2, 3, 1, 2]
    assert batch["user_feature_languages_lengths"].tolist() == [1, 2, 2]


# ---- wiring: each feature kind reaches its tower as one field, from one torchrec collection ----


class _RecordingTower(torch.nn.Module):
    """A tower that records the fields it is given (``[B, F, D]``) and returns their mean."""

    def __init__(self, num_fields: int, field_dim: int):
        super().__init__()
        self.num_fields, self.output_dim, self.seen = num_fields, field_dim, []
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        self.seen.append(fields.detach())
        return self.scale * fields.mean(1)


@pytest.fixture
def side_feature_files(tmp_path):
    rng = np.random.default_rng(0)
    users = pd.DataFrame({"uid": np.arange(12), "lang": rng.choice(["en", "fr", None], 12), "follows": "a|b"})
    users.loc[3, "follows"] = ""
    items = pd.DataFrame(
        {
            "iid": np.arange(20),
            "decade": rng.choice(["1990s", "2000s"], 20),
            "tags": [["x", "y"][: i % 3] for i in range(20)],  # 0, 1 or 2 tags
            "creator": [f"c{i}" for i in range(20)],  # huge cardinality: hashed
        }
    )
    inter = pd.DataFrame(
        {"uid": np.repeat(np.arange(12), 5), "iid": rng.integers(20, size=60), "ts": np.tile(np.arange(5), 12)}
    )
    paths = {}
    for name, table in (("users", users), ("items", items), ("interactions", inter)):
        paths[name] = str(tmp_path / f"{name}.parquet")
        table.to_parquet(paths[name])
    return paths


def _datamodule(paths):
    from lightning_retrieval.data.datamodule import RetrievalDataModule
    from lightning_retrieval.data.sources import InteractionsFileSource

    source = InteractionsFileSource(
        paths["interactions"],
        items_path=paths["items"],
        users_path=paths["users"],
        user_column="uid",
        item_column="iid",
        timestamp_column="ts",
        user_categorical_columns=["lang"],
        user_multi_valued_columns=["follows"],
        item_categorical_columns=["decade", "creator"],
        item_multi_valued_columns=["tags"],
        hash_buckets={"creator": 8},
    )
    return RetrievalDataModule(source, batch_size=16, eval_batch_size=16, max_history=4)


def test_each_feature_kind_reaches_its_tower_as_one_field(side_feature_files):
    from lightning_retrieval.tasks.retrieval import RetrievalTask

    dm = _datamodule(side_feature_files)
    spec = dm.feature_spec
    assert spec["user_side_features"] == {"lang": 3, "follows": 3}  # en, fr (+ id 0); a, b (+ id 0)
    assert spec["item_side_features"] == {"decade": 3, "creator": 9, "tags": 3}
    model = RetrievalTask(spec, embedding_dim=6, user_tower=_RecordingTower, item_tower=_RecordingTower)
    # one collection holds the ID tables and every side-feature table (so torchrec shards them all)
    assert set(model.embeddings.collection.embedding_bags) == {
        "user_id", "item_id", "user_feature_lang", "user_feature_follows",
        "item_feature_decade", "item_feature_creator", "item_feature_tags",
    }  # fmt: skip
    model.eval()
    batch = next(iter(dm.train_dataloader()))
    model.loss_terms(batch)
    user_fields, item_fields = model.user_tower.seen[-1], model.item_tower.seen[0]
    b = batch["user"].shape[0]
    assert user_fields.shape == (b, 4, 6)  # user id, history, lang, follows
    assert item_fields.shape == (b, 4, 6)  # item id, decade, creator, tags (no topics, no dense)

    def table(name):
        return model.embeddings.table(name).detach()

    # the fields are the rows of their own tables: one id for categorical, the mean of the bag for multi-valued
    side = dm.side_features
    lang = torch.as_tensor(side.users["lang"].ids.values)[batch["user"]]
    assert torch.allclose(user_fields[:, 2], table("user_feature_lang")[lang])
    follows = [torch.as_tensor(side.users["follows"].ids.row(int(u))) for u in batch["user"]]
    expected = torch.stack([table("user_feature_follows")[ids].mean(0) for ids in follows])
    assert torch.allclose(user_fields[:, 3], expected, atol=1e-6)
    tags = [torch.as_tensor(side.items["tags"].ids.row(int(i))) for i in batch["item"]]
    expected = torch.stack([table("item_feature_tags")[ids].mean(0) for ids in tags])
    assert torch.allclose(item_fields[:, 3], expected, atol=1e-6)
    creator = torch.as_tensor(side.items["creator"].ids.values)[batch["item"]]
    assert (creator >= 1).all() and (creator <= 8).all()
    assert torch.allclose(item_fields[:, 2], table("item_feature_creator")[creator])
    assert any("collision rate" in line for line in dm.describe()["side_features"])


def test_a_model_with_side_features_refuses_batches_without_them(side_feature_files):
    from lightning_retrieval.tasks.retrieval import RetrievalTask

    dm = _datamodule(side_feature_files)
    model = RetrievalTask(dm.feature_spec, embedding_dim=6)
    batch = next(iter(dm.train_dataloader()))
    del batch["item_feature_tags"]
    with pytest.raises(KeyError, match="item_feature_tags"):
        model.loss_terms(batch)


def test_embedded_movielens_item_side_features():
    from lightning_retrieval.data.sources import MovieLensSource

    side = MovieLensSource(item_side_features=True).side_features()
    items = side.items.set_index("item_id")
    assert items.loc[1, "decade"] == "1990s"  # Toy Story (1995)
    assert "tags" not in items.columns  # tags are timed events, filtered by the split before they become a column
    toy_story = side.item_events["tags"].query("item_id == 1")
    assert sorted(set(toy_story["value"])) == ["fun", "pixar"]  # tags.csv, lower-cased
    assert [s.feature_name for s in side.item_specs] == ["decade", "tags"] and side.item_specs[1].multi_valued
    assert MovieLensSource().side_features() is None


# ---- timed item values (tags): only those applied inside the training part of the split ----


def _timed_tags(split: str, **split_args):
    """Users a (times 1..4) and b (times 10..13), one test and one validation item each; tags by a, b and an
    unknown user c at chosen times. Returns the encoded ``tags`` bags by item id and the feature report."""
    from lightning_retrieval.data.features import RawSideFeatures, prepare_side_features
    from lightning_retrieval.data.preparation import prepare
    from lightning_retrieval.data.schema import RawInteractions

    inter = pd.DataFrame(
        {
            "user_id": ["a"] * 4 + ["b"] * 4,
            "item_id": [1, 2, 3, 4, 1, 2, 3, 4],
            "timestamp": [1, 2, 3, 4, 10, 11, 12, 13],
        }
    )
    data = prepare(RawInteractions(inter, name="toy"), split=split, **split_args)
    events = pd.DataFrame(
        {
            "item_id": [1, 2, 3, 1, 2, 4],
            "user_id": ["a", "a", "a", "b", "b", "c"],
            "timestamp": [2.5, 3.0, 9.0, 11.0, 12.0, 1.0],
            "value": ["early", "at_target", "after_target", "b_training", "b_target", "nobody"],
        }
    )
    raw = RawSideFeatures(
        items=pd.DataFrame({"item_id": [1, 2, 3, 4]}),
        item_specs=[SideFeatureSpec("tags", multi_valued=True)],
        item_events={"tags": events},
    )
    tags = prepare_side_features(raw, data).items["tags"]
    vocab = np.concatenate([[None], tags.vocabulary])
    bags = {int(i): sorted(v for v in vocab[tags.ids.row(r)] if v) for r, i in enumerate(data.item_ids)}
    return bags, tags.report


def test_leave_last_out_keeps_tags_applied_before_the_users_first_held_out_interaction():
    bags, report = _timed_tags("leave_last_out")
    # a's first target is at t=3 (validation), b's at t=12: a tag at or after it is evaluation-window data.
    # b's tag at t=11 stays although a's targets are earlier: the split is per user, so are the tags
    assert bags == {1: ["b_training", "early"], 2: [], 3: [], 4: []}
    assert (report["events_kept"], report["events_after_training"], report["events_of_unknown_users"]) == (2, 3, 1)


def test_global_time_keeps_only_tags_before_the_validation_cut():
    bags, report = _timed_tags("global_time", val_time=9.5, test_time=12.5)
    # one cut for everyone: a's tag at t=9 is in (a has no targets), b's at t=11 is out
    assert bags == {1: ["early"], 2: ["at_target"], 3: ["after_target"], 4: []}
    assert (report["events_kept"], report["events_after_training"]) == (3, 2)


def test_embedded_movielens_tags_come_only_from_each_taggers_training_part():
    from lightning_retrieval.data.datamodule import RetrievalDataModule
    from lightning_retrieval.data.sources import MovieLensSource, embedded_movielens_path

    dm = RetrievalDataModule(MovieLensSource(item_side_features=True), split="leave_last_out")
    tags = dm.side_features.items["tags"]
    # an independent oracle: with one validation and one test item, a user's first held-out interaction is the
    # second-latest rating (ties broken either way give the same time)
    root = embedded_movielens_path()
    ratings = pd.read_csv(root / "ratings.csv")
    first_target = ratings.groupby("userId")["timestamp"].agg(lambda t: np.sort(t.to_numpy())[-2])
    raw = pd.read_csv(root / "tags.csv")
    allowed = raw["timestamp"].to_numpy() < first_target.reindex(raw["userId"]).to_numpy()
    assert 0 < (~allowed).sum() == tags.report["events_after_training"]  # some tags are left out
    kept = raw[allowed].assign(tag=raw["tag"].str.strip().str.lower())
    vocab = pd.Index(tags.vocabulary)
    rows = pd.Index(dm.data.item_ids).get_indexer(kept["movieId"])
    codes = vocab.get_indexer(kept["tag"]) + 1
    expected = {(int(r), int(c)) for r, c in zip(rows, codes) if c > 0}
    encoded = {(r, int(v)) for r in range(tags.ids.num_rows) for v in tags.ids.row(r) if v > 0}
    assert encoded == expected


def test_interactions_file_side_feature_errors_name_the_column(side_feature_files):
    from lightning_retrieval.data.sources import InteractionsFileSource

    paths = side_feature_files
    base = {"interactions_path": paths["interactions"], "user_column": "uid", "item_column": "iid"}
    with pytest.raises(DataValidationError, match=r"\['genre'\] need items_path"):
        InteractionsFileSource(**base, item_categorical_columns=["genre"]).side_features()
    with pytest.raises(DataValidationError, match=r"missing column\(s\) \['genre'\]"):
        InteractionsFileSource(**base, items_path=paths["items"], item_categorical_columns=["genre"]).side_features()
    with pytest.raises(DataValidationError, match=r"hash_buckets names columns \['lang'\]"):
        InteractionsFileSource(
            **base, items_path=paths["items"], item_categorical_columns=["decade"], hash_buckets={"lang": 4}
        ).side_features()
    assert InteractionsFileSource(**base).side_features() is None


# ---- the committed crossing configs: the item tower sees the MovieLens side features as fields ----

CROSSING_CONFIGS = ["mlp_features", "masknet", "dhen", "transformer", "dcnv2"]


def test_crossing_configs_feed_the_side_features_to_their_towers_as_fields():
    import yaml

    from lightning_retrieval.cli import prepare_registry
    from lightning_retrieval.data.datamodule import RetrievalDataModule
    from lightning_retrieval.registry import resolve
    from lightning_retrieval.serving.user_side import build_model

    prepare_registry()
    configs = Path(__file__).resolve().parents[1] / "configs"
    data = yaml.safe_load((configs / "base" / "data_features.yaml").read_text())
    source = data.pop("source")
    assert source == {"class_path": "movielens", "init_args": {"item_side_features": True}}
    dm = RetrievalDataModule(resolve("datasets", "movielens")(**source["init_args"]), **{**data, "batch_size": 32})
    batch = next(iter(dm.train_dataloader()))
    side = dm.side_features.items
    decade = torch.as_tensor(side["decade"].ids.values)[batch["item"]]
    tags = [torch.as_tensor(side["tags"].ids.row(int(i))) for i in batch["item"]]
    for name in CROSSING_CONFIGS:
        config = yaml.safe_load((configs / f"{name}.yaml").read_text())
        assert config["data"] == "base/data_features.yaml", name
        model_config = config["model"]
        model_config["init_args"]["feature_spec"] = dm.feature_spec
        torch.manual_seed(0)
        model = build_model(model_config, name)
        seen: dict[str, torch.Tensor] = {}
        for tower in ("user_tower", "item_tower"):
            getattr(model, tower).register_forward_pre_hook(
                lambda module, args, tower=tower, seen=seen: seen.setdefault(tower, args[0].detach())
            )
        model.loss_terms(batch)
        b = len(batch["user"])
        assert seen["user_tower"].shape == (b, 2, 64), name  # user id, history (MovieLens has no user features)
        assert seen["item_tower"].shape == (b, 4, 64), name  # item id, genres, decade, tags
        fields = seen["item_tower"]
        assert torch.allclose(fields[:, 2], model.embeddings.table("item_feature_decade").detach()[decade]), name
        pooled = torch.stack([model.embeddings.table("item_feature_tags").detach()[t].mean(0) for t in tags])
        assert torch.allclose(fields[:, 3], pooled, atol=1e-6), name
