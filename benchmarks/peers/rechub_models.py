"""torch-rechub (YoutubeDNN, ComiRec-SA, MIND) on our exported split; runs in the peers' venv (``.venv-peers``).

Same training examples, history length, batch size and width as ours. torch-rechub's multi-interest
models need explicit negatives (its in-batch mode takes one user vector), so all three train list-wise
(softmax over the positive and ``--negatives`` uniform items, torch-rechub's ``mode=2``). Epoch times are
measured around ``MatchTrainer.train_one_epoch``; the test users' and all items' vectors are exported in our
id order to ``benchmarks/.work/rechub_<model>.npz`` for our evaluator.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

WORK = Path(__file__).resolve().parents[1] / ".work"


def build_model(name: str, num_users: int, num_items: int, dim: int, max_history: int, temperature: float):
    from torch_rechub.basic.features import SequenceFeature, SparseFeature
    from torch_rechub.models.matching import MIND, ComirecSA, YoutubeDNN

    user = SparseFeature("user_id", vocab_size=num_users, embed_dim=dim)
    item = SparseFeature("item_id", vocab_size=num_items + 1, embed_dim=dim)  # 0 = padding
    negatives = SequenceFeature("neg_items", num_items + 1, dim, pooling="concat", shared_with="item_id")
    if name == "YoutubeDNN":
        history = SequenceFeature("hist_item_id", num_items + 1, dim, pooling="mean", shared_with="item_id")
        return YoutubeDNN([user, history], [item], [negatives], {"dims": [256, 128, dim]}, temperature=temperature)
    history = SequenceFeature("hist_item_id", num_items + 1, dim, pooling="concat", shared_with="item_id")
    if name == "ComiRec-SA":
        return ComirecSA([user], [history], [item], [negatives], temperature=temperature, interest_num=4)
    if name == "MIND":
        return MIND([user], [history], [item], [negatives], max_history, temperature=temperature, interest_num=4)
    raise SystemExit(f"unknown model {name!r}; valid: YoutubeDNN, ComiRec-SA, MIND")


def run_model(name: str, args, split) -> dict:
    from torch_rechub.trainers import MatchTrainer
    from torch_rechub.utils.data import TorchDataset

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    num_users, num_items = int(split["num_users"]), int(split["num_items"])
    model = build_model(name, num_users, num_items, args.dim, int(split["max_history"]), args.temperature)
    trainer = MatchTrainer(
        model,
        mode=2,
        optimizer_params={"lr": 1e-3, "weight_decay": 0.0},
        n_epoch=args.epochs,
        device="cpu",
        model_path=str(WORK / "rechub"),
    )
    examples = len(split["train_item"])
    epoch_seconds = []
    for _ in range(args.epochs):
        x = {
            "user_id": split["train_user"],
            "hist_item_id": split["train_history"],
            "item_id": split["train_item"] + 1,
            "neg_items": rng.integers(1, num_items + 1, size=(examples, args.negatives)),
        }
        loader = torch.utils.data.DataLoader(
            TorchDataset(x, np.zeros(examples, dtype=np.int64)), batch_size=args.batch_size, shuffle=True
        )
        start = time.perf_counter()
        trainer.train_one_epoch(loader, log_interval=10**9)
        epoch_seconds.append(time.perf_counter() - start)
    model.eval()
    with torch.no_grad():
        model.mode = "user"
        users = model(
            {
                "user_id": torch.as_tensor(split["test_users"]),
                "hist_item_id": torch.as_tensor(split["test_history"]),
            }
        )
        model.mode = "item"
        items = model({"item_id": torch.arange(1, num_items + 1)})
    np.savez(WORK / f"rechub_{name}.npz", users=users.numpy(), items=items.numpy())
    steady = epoch_seconds[1:] or epoch_seconds
    return {
        "model": name,
        "train_examples_per_epoch": examples,
        "epochs": args.epochs,
        "epoch_seconds": epoch_seconds,
        "train_examples_per_second": examples / float(np.median(steady)),
        "negatives": args.negatives,
    }


class TimedBatches:
    """Yields the first ``count`` batches of ``loader`` and the seconds on ``clock`` between consecutive batches
    (a training step plus building the next batch)."""

    def __init__(self, loader, count: int, clock=time.perf_counter):
        self.loader, self.count, self.clock, self.seconds = loader, count, clock, []

    def __iter__(self):
        last = None
        for i, batch in enumerate(self.loader):
            now = self.clock()
            if last is not None:
                self.seconds.append(now - last)
            if i == self.count:
                return
            last = now
            yield batch


def batch_throughput(name: str, args, split) -> dict:
    """Median seconds per batch over ``--batches`` batches after a warm-up batch (``training_throughput.py``)."""
    from torch_rechub.trainers import MatchTrainer
    from torch_rechub.utils.data import TorchDataset

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    num_users, num_items = int(split["num_users"]), int(split["num_items"])
    model = build_model(name, num_users, num_items, args.dim, int(split["max_history"]), args.temperature)
    trainer = MatchTrainer(model, mode=2, optimizer_params={"lr": 1e-3, "weight_decay": 0.0}, device="cpu")
    examples = len(split["train_item"])
    x = {
        "user_id": split["train_user"],
        "hist_item_id": split["train_history"],
        "item_id": split["train_item"] + 1,
        "neg_items": rng.integers(1, num_items + 1, size=(examples, args.negatives)),
    }
    loader = torch.utils.data.DataLoader(
        TorchDataset(x, np.zeros(examples, dtype=np.int64)), batch_size=args.batch_size, shuffle=True
    )
    timed = TimedBatches(loader, args.batches + 1, time.process_time if args.clock == "cpu" else time.perf_counter)
    trainer.train_one_epoch(timed, log_interval=10**9)
    steady = sorted(timed.seconds[1:])
    return {"model": name, "batch_size": args.batch_size, "batch_seconds_median": steady[len(steady) // 2]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="YoutubeDNN,ComiRec-SA,MIND")
    ap.add_argument("--batches", type=int, default=0, help="time this many batches per model instead of epochs")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="--batches: wall or process CPU time")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--negatives", type=int, default=100)
    ap.add_argument("--temperature", type=float, default=0.05)
    args = ap.parse_args()
    split = dict(np.load(WORK / "split.npz"))
    if args.batches:
        print(json.dumps([batch_throughput(name, args, split) for name in args.models.split(",")]))
        return
    results = [run_model(name, args, split) for name in args.models.split(",")]
    (WORK / "rechub.json").write_text(json.dumps(results, indent=2))
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
