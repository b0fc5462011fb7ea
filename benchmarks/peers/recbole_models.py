"""RecBole (Pop, BPR, SASRec) on our exported split; runs in the peers' venv (``.venv-peers``).

For each model: train for the epoch budget, time the training, time RecBole's own full-sort evaluation of
the test users (and keep RecBole's metrics), and export the test users' and all items' vectors in our id
order to ``benchmarks/.work/recbole_<model>.npz`` for our evaluator. ``--scale-items N`` instead times
RecBole's full-sort evaluation of an untrained BPR over a generated catalogue of N items.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

WORK = Path(__file__).resolve().parents[1] / ".work"


def recbole_config(model: str, dataset: str, epochs: int, batch_size: int, dim: int, max_history: int, eval_users: int):
    from recbole.config import Config

    return Config(
        model=model,
        dataset=dataset,
        config_dict={
            "data_path": str(WORK / "recbole"),
            "checkpoint_dir": str(WORK / "recbole" / "saved"),
            "USER_ID_FIELD": "user_id",
            "ITEM_ID_FIELD": "item_id",
            "TIME_FIELD": "timestamp",
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
            "metrics": ["Recall", "NDCG", "Hit"],
            "topk": [20, 50],
            "valid_metric": "Recall@50",
            "epochs": epochs,
            "train_batch_size": batch_size,
            "eval_batch_size": eval_users,
            "embedding_size": dim,
            "hidden_size": dim,
            "inner_size": 4 * dim,
            "MAX_ITEM_LIST_LENGTH": max_history,
            "loss_type": "CE" if model == "SASRec" else "BPR",
            "train_neg_sample_args": None if model == "SASRec" else {"distribution": "uniform", "sample_num": 1},
            "seed": 0,
            "reproducibility": True,
            "use_gpu": False,
            "show_progress": False,
            "log_wandb": False,
            "state": "WARNING",
        },
    )


def build(config):
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    return dataset, train_data, test_data, model, trainer


def test_pairs(dataset, test_data) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) of RecBole's test interactions, in our ids."""
    inter = test_data._dataset.inter_feat
    users = dataset.id2token("user_id", inter["user_id"].numpy()).astype(np.int64)
    items = dataset.id2token("item_id", inter["item_id"].numpy()).astype(np.int64)
    return users, items


@torch.no_grad()
def user_vectors(name: str, model, dataset, test_data, split) -> np.ndarray:
    """Test users' vectors ``[U, D]`` in our test-user order."""
    ours = split["test_users"]
    if name == "Pop":
        return np.ones((len(ours), 1), dtype=np.float32)
    if name == "BPR":
        rows = dataset.token2id("user_id", [str(u) for u in ours])
        return model.user_embedding.weight[torch.as_tensor(rows)].numpy()
    model.eval()
    out = {}
    for interaction, *_ in test_data:
        seq = model.forward(interaction["item_id_list"], interaction["item_length"])  # [B, D]
        for u, v in zip(dataset.id2token("user_id", interaction["user_id"].numpy()).astype(np.int64), seq.numpy()):
            out[int(u)] = v
    return np.stack([out[int(u)] for u in ours])


def item_vectors(name: str, model, dataset, num_items: int) -> np.ndarray:
    """``[N, D]`` in our item order; items RecBole never saw (in the catalogue, no interaction) get zeros."""
    known = dataset.field2token_id["item_id"]
    rows = torch.as_tensor([known.get(str(i), 0) for i in range(num_items)])  # RecBole's id 0 is padding
    table = model.item_cnt.float().reshape(-1, 1) if name == "Pop" else model.item_embedding.weight.detach()
    vectors = table[rows].clone()
    vectors[rows == 0] = 0.0
    return vectors.numpy()


def run_model(name: str, args, split) -> dict:
    config = recbole_config(name, "mlsplit", args.epochs, args.batch_size, args.dim, int(split["max_history"]), 4096)
    dataset, train_data, test_data, model, trainer = build(config)
    users, items = test_pairs(dataset, test_data)
    ours = dict(zip(split["test_users"].tolist(), split["test_target_values"].tolist()))
    same = len(users) == len(ours) and all(ours.get(int(u)) == int(i) for u, i in zip(users, items))
    if not same:
        raise SystemExit(f"RecBole's test split differs from ours ({len(users)} vs {len(ours)} test interactions)")
    examples = len(train_data._dataset)
    start = time.perf_counter()
    trainer.fit(train_data, valid_data=None, saved=False, show_progress=False)
    train_seconds = time.perf_counter() - start
    epochs = 1 if name == "Pop" else args.epochs
    start = time.perf_counter()
    recbole_metrics = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    eval_seconds = time.perf_counter() - start
    np.savez(
        WORK / f"recbole_{name}.npz",
        users=user_vectors(name, model, dataset, test_data, split),
        items=item_vectors(name, model, dataset, int(split["num_items"])),
    )
    return {
        "model": name,
        "train_examples_per_epoch": examples,
        "epochs": epochs,
        "train_seconds": train_seconds,
        "train_examples_per_second": examples * epochs / train_seconds if name != "Pop" else None,
        "full_sort_eval_seconds": eval_seconds,
        "eval_users": len(users),
        "recbole_metrics": {k: float(v) for k, v in dict(recbole_metrics).items()},
    }


def scale_run(args) -> dict:
    """RecBole full-sort evaluation time of an untrained BPR over ``args.scale_items`` generated items."""
    rng = np.random.default_rng(0)
    name = f"scale{args.scale_items}"
    folder = WORK / "recbole" / name
    folder.mkdir(parents=True, exist_ok=True)
    per_user = args.scale_history + 2
    users = np.repeat(np.arange(args.scale_users), per_user)
    items = rng.integers(0, args.scale_items, size=len(users))
    with (folder / f"{name}.inter").open("w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        f.writelines(f"{u}\t{i}\t{t}\n" for t, (u, i) in enumerate(zip(users.tolist(), items.tolist())))
    with (folder / f"{name}.item").open("w") as f:  # the whole catalogue, also items nobody interacted with
        f.write("item_id:token\n")
        f.writelines(f"{i}\n" for i in range(args.scale_items))
    config = recbole_config("BPR", name, 1, 512, args.dim, 50, args.scale_items * 256)
    config["load_col"] = {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]}
    dataset, train_data, test_data, model, trainer = build(config)
    start = time.perf_counter()
    trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    seconds = time.perf_counter() - start
    users_t, items_t = test_pairs(dataset, test_data)
    np.savez(
        WORK / f"recbole_{name}.npz",
        users=model.user_embedding.weight[torch.as_tensor(dataset.token2id("user_id", [str(u) for u in users_t]))]
        .detach()
        .numpy(),
        items=item_vectors("BPR", model, dataset, args.scale_items),
        test_users=users_t,
        test_items=items_t,
        inter_users=users,
        inter_items=items,
    )
    return {"items": args.scale_items, "users": len(users_t), "full_sort_eval_seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="Pop,BPR,SASRec")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--scale-items", type=int, default=0)
    ap.add_argument("--scale-users", type=int, default=2000)
    ap.add_argument("--scale-history", type=int, default=20)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(torch.get_num_threads())
    if args.scale_items:
        result = scale_run(args)
        (WORK / "recbole_scale.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result))
        return
    split = dict(np.load(WORK / "split.npz"))
    results = [run_model(name, args, split) for name in args.models.split(",")]
    (WORK / "recbole.json").write_text(json.dumps(results, indent=2))
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
