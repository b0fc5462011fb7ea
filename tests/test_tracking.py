"""W&B offline: run name/group/tags from components, full config, metrics and tables read back from the run file."""

import json

import pytest

from lightning_retrieval.tracking.wandb_files import read_run
from lightning_retrieval.tracking.wandb_setup import component_names

from conftest import REPO, run_cli


def test_component_names_are_registry_names_in_order():
    cfg = {
        "model": {
            "class_path": "lightning_retrieval.tasks.retrieval.RetrievalTask",
            "init_args": {
                "user_tower": {
                    "class_path": "lightning_retrieval.models.towers.FeatureCrossingTower",
                    "init_args": {"crossing": {"class_path": "lightning_retrieval.models.crossing.MaskNetCrossing"}},
                },
                "optimizer": {"class_path": "torch.optim.Adam"},
            },
        }
    }
    assert component_names(cfg, registry_only=True) == ["retrieval", "feature_crossing", "masknet"]
    assert component_names(cfg)[-1] == "Adam"


@pytest.mark.slow
def test_wandb_offline_run_records_config_metrics_and_tables(tmp_path):
    out = run_cli(
        "fit",
        "--config",
        str(REPO / "configs/masknet.yaml"),
        "--config",
        str(REPO / "configs/wandb.yaml"),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=5",
        "--trainer.enable_progress_bar=false",
        cwd=tmp_path,
    )
    assert "[val epoch 0] recall@50=" in out.stderr + out.stdout  # readable console line per evaluation
    run_dir = next((tmp_path / "runs/wandb/wandb").glob("offline-run-*"))
    run = read_run(run_dir)
    assert run["run"]["group"] == "masknet" and run["run"]["name"].startswith("masknet-retrieval")
    assert {"retrieval", "feature_crossing", "masknet", "retrieval_evaluation", "movielens"} <= set(run["run"]["tags"])
    resolved = run["config"]["lightning_retrieval"]
    crossing = resolved["model"]["init_args"]["user_tower"]["init_args"]["crossing"]
    assert crossing["class_path"].endswith("MaskNetCrossing") and crossing["init_args"]["num_blocks"] == 4
    recalls = [h["val/recall@50"] for h in run["history"] if "val/recall@50" in h]
    assert len(recalls) == 1 and 0 <= recalls[0] <= 1
    csv_card = json.loads(next((tmp_path / "runs/wandb/csv").rglob("result_card_val.json")).read_text())
    assert recalls[0] == pytest.approx(csv_card["metrics"]["recall@50"])
    assert run["summary"]["val/segments/_type"] == "table-file"
    table = json.loads(next(run_dir.rglob("val/sample_retrievals*.table.json")).read_text())
    assert table["columns"][:3] == ["user_id", "history_top_topics", "top10_item_ids"] and len(table["data"]) == 5
