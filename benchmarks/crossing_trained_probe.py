"""Did a trained tower learn the planted cross? R² of its embeddings by cross type, on ``synthetic_crosses`` runs.

For each run (config + ``seed_N`` directory of ``compare --seeds``) it loads the best checkpoint, embeds every item
and the test users, and reports the share of the embeddings' variance explained by

- ``cross``: the cross type (``(category + style) mod K`` for items, ``(segment + region) mod K`` for users), what
  relevance depends on at ``cross_strength`` 1;
- ``main``: the first feature alone (``category`` / ``segment``), what relevance depends on at 0;
- ``type_scores``: the mean score of users of each cross type (rows) for items of each cross type (columns), and
  ``types_matched``: how many user types score their own item type highest (K when the cross is used right).

An R² near 0 for ``cross`` at cross_strength 1 means the tower did not learn the cross from the features (it can
still rank by IDs and history).

    python benchmarks/crossing_trained_probe.py configs/crossing_synthetic/dhen_cross1.yaml --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from lightning_retrieval.checkpoints import safe_torch_load
from lightning_retrieval.cli import RetrievalCLI, prepare_registry
from lightning_retrieval.configs import run_dir_of
from lightning_retrieval.data.datamodule import RetrievalDataModule
from lightning_retrieval.tasks.base import RetrievalModel


def explained(vectors: np.ndarray, groups: np.ndarray) -> float:
    """R² of ``vectors [N, D]`` by the group means of ``groups [N]``."""
    centred = vectors - vectors.mean(0)
    means = np.zeros((groups.max() + 1, vectors.shape[1]))
    np.add.at(means, groups, centred)
    means /= np.maximum(np.bincount(groups, minlength=len(means)), 1)[:, None]
    return float((means[groups] ** 2).sum() / (centred**2).sum())


def best_checkpoint(run: Path) -> Path:
    candidates = [p for p in (run / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    if not candidates:
        raise SystemExit(f"no best checkpoint under {run}/checkpoints")
    return max(candidates, key=lambda p: p.stat().st_mtime)


@torch.no_grad()
def probe(config: Path, seed: int) -> dict:
    run = run_dir_of(config) / f"seed_{seed}"
    args = ["--config", str(config), "--trainer.logger=false", f"--seed_everything={seed}"]
    cli = RetrievalCLI(RetrievalModel, RetrievalDataModule, subclass_mode_model=True, run=False, args=args)
    model, dm = cli.model.eval(), cli.datamodule
    model.load_state_dict(safe_torch_load(best_checkpoint(run))["state_dict"])
    dm.setup("test")
    source = dm.source
    _, users, items = source._tables
    k = source.num_values
    item_vectors = torch.cat([model.embed_items(batch) for batch in dm.corpus_batches("test")]).numpy()
    item_table = items.set_index("item_id").loc[np.asarray(dm.item_ids)]
    user_vectors, user_rows = [], []
    evaluation = dm.evaluation_set("test")
    for batch in dm.test_dataloader():
        user_vectors.append(model.embed_users(batch).vectors[:, 0])
    user_vectors = torch.cat(user_vectors).numpy()
    user_rows = np.asarray(dm.user_ids)[evaluation.users]
    user_table = users.set_index("user_id").loc[user_rows]
    item_cross = ((item_table["category"] + item_table["style"]) % k).to_numpy()
    user_cross = ((user_table["segment"] + user_table["region"]) % k).to_numpy()
    # [K user types, K item types] mean score: the diagonal must win for each user type to rank its own type first
    scores = user_vectors @ item_vectors.T
    type_scores = np.stack([[scores[user_cross == u][:, item_cross == i].mean() for i in range(k)] for u in range(k)])
    return {
        "config": config.stem,
        "types_matched": int((type_scores.argmax(1) == np.arange(k)).sum()),
        "type_scores": np.round(type_scores, 3).tolist(),
        "seed": seed,
        "item_r2_cross": explained(item_vectors, item_cross),
        "item_r2_main": explained(item_vectors, item_table["category"].to_numpy()),
        "user_r2_cross": explained(user_vectors, user_cross),
        "user_r2_main": explained(user_vectors, user_table["segment"].to_numpy()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    prepare_registry()
    for config in args.configs:
        for seed in args.seeds:
            print(json.dumps(probe(config, seed)), flush=True)


if __name__ == "__main__":
    main()
