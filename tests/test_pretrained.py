"""Pre-trained ID embeddings: export format, loading by original id, freezing, dropout, window overlap."""

import numpy as np
import pytest
import torch

from lightning_retrieval.data import RetrievalDataModule
from lightning_retrieval.models.embeddings import IdEmbeddings
from lightning_retrieval.models.pretrained import PretrainedIds, load_pretrained_ids, save_pretrained_ids

from conftest import REPO, make_raw, run_cli


def _file(tmp_path, window=(0.0, 100.0)):
    user_table, item_table = torch.randn(3, 4), torch.randn(2, 4)
    path = save_pretrained_ids(tmp_path / "ids.pt", ["u1", "u0", "zz"], user_table, [5, 3], item_table, window)
    return path, user_table, item_table


def test_export_format_round_trips(tmp_path):
    path, user_table, _ = _file(tmp_path)
    blob = load_pretrained_ids(path)
    assert blob["format"] == "lightning-retrieval/pretrained-ids/v1" and blob["embedding_dim"] == 4
    assert blob["user_ids"] == ["u1", "u0", "zz"] and blob["window"] == [0.0, 100.0]
    torch.testing.assert_close(blob["user_table"], user_table)
    torch.save({"something": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a pre-trained ID file"):
        load_pretrained_ids(tmp_path / "bad.pt")


def test_loading_matches_original_ids_freezes_and_sets_dropout(tmp_path):
    path, user_table, item_table = _file(tmp_path)
    emb = IdEmbeddings(num_users=2, num_items=3, num_topics=0, embedding_dim=4)
    before = emb.table("item_id").detach().clone()
    report = PretrainedIds(str(path)).apply(emb, np.array(["u0", "u1"]), np.array([3, 4, 5]), (200.0, 300.0))
    torch.testing.assert_close(emb.table("user_id")[0], user_table[1])  # our u0 is their row 1
    torch.testing.assert_close(emb.table("user_id")[1], user_table[0])
    torch.testing.assert_close(emb.table("item_id")[0], item_table[1])  # item 3
    torch.testing.assert_close(emb.table("item_id")[2], item_table[0])  # item 5
    torch.testing.assert_close(emb.table("item_id")[1], before[1])  # item 4 unknown to the file: untouched
    assert report["item_id_missing"] == 1 and report["user_id_loaded"] == 2
    assert not emb.table("user_id").requires_grad and emb.dropout.p == 0.5
    tuned = IdEmbeddings(2, 3, 0, 4)
    PretrainedIds(str(path), freeze=False, dropout=0.1).apply(tuned, np.array(["u0"]), np.array([3]), (200.0, 300.0))
    assert tuned.table("user_id").requires_grad and tuned.dropout.p == 0.1


def test_overlapping_windows_are_refused_unless_allowed(tmp_path):
    path, _, _ = _file(tmp_path, window=(0.0, 100.0))
    emb = IdEmbeddings(2, 3, 0, 4)
    with pytest.raises(ValueError, match="overlaps the model's training window.*allow_window_overlap"):
        PretrainedIds(str(path)).apply(emb, np.array(["u0"]), np.array([3]), (50.0, 150.0))
    PretrainedIds(str(path), allow_window_overlap=True).apply(emb, np.array(["u0"]), np.array([3]), (50.0, 150.0))
    PretrainedIds(str(path)).apply(emb, np.array(["u0"]), np.array([3]), (100.0, 150.0))  # touching is fine


def test_train_window_selects_training_targets():
    from lightning_retrieval.data.sources import InteractionSource

    class Raw(InteractionSource):
        def load(self):
            return make_raw(n_users=8, per_user=10)

    dm = RetrievalDataModule(source=Raw(), train_window=[0.5, 1.0])
    start, end = dm.training_window
    ts = dm.data.timestamp[dm.training_indices()]
    assert (ts >= start).all() and (ts < end).all() and start == pytest.approx(np.quantile(dm.data.timestamp, 0.5))
    assert len(dm.training_indices()) < len(dm.data.train_indices())
    with pytest.raises(ValueError, match=r"train_window must be \[start, end\]"):
        RetrievalDataModule(source=Raw(), train_window=[0.5])


@pytest.mark.slow
def test_cli_pretrain_then_frozen_two_tower(tmp_path):
    import json

    def cli(*args):
        return run_cli(
            *args,
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=5",
            "--trainer.enable_progress_bar=false",
            cwd=tmp_path,
            check=False,
        )

    out = cli("fit", "--config", str(REPO / "configs/pretrain_ids.yaml"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert load_pretrained_ids(tmp_path / "runs/pretrained/ids.pt")["embedding_dim"] == 64
    out = cli("fit", "--config", str(REPO / "configs/two_tower_pretrained.yaml"))
    assert out.returncode == 0, out.stderr[-2000:]
    card = json.loads(next((tmp_path / "runs/two_tower_pretrained").rglob("result_card_val.json")).read_text())
    assert card["metrics"]["recall@50"] > 0
    overlap = cli("fit", "--config", str(REPO / "configs/two_tower_pretrained.yaml"), "--data.train_window=[0.25, 1.0]")
    assert overlap.returncode != 0 and "overlaps the model's training window" in overlap.stderr


def test_frozen_tables_do_not_change_during_training(tmp_path, movielens_dm):
    import lightning.pytorch as pl

    from lightning_retrieval.tasks import RetrievalTask

    dm = movielens_dm
    users, items = torch.randn(len(dm.user_ids), 16), torch.randn(dm.num_items, 16)
    path = save_pretrained_ids(tmp_path / "ids.pt", dm.user_ids, users, dm.item_ids, items, (0.0, 1.0))
    model = RetrievalTask(
        feature_spec=movielens_dm.feature_spec, embedding_dim=16, pretrained_ids=PretrainedIds(str(path))
    )
    pl.Trainer(
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        enable_model_summary=False,
    ).fit(model, datamodule=movielens_dm)
    assert model.pretrained_report["user_id_loaded"] == len(dm.user_ids)
    torch.testing.assert_close(model.embeddings.table("user_id").detach(), users)
    torch.testing.assert_close(model.embeddings.table("item_id").detach(), items)
    assert model.user_tower.projection.weight.requires_grad  # the rest of the model still trains
