import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("LIGHTNING_RETRIEVAL_PLUGIN_PATH", str(REPO / "plugins"))


def subprocess_env(**extra) -> dict:
    """The test environment for child processes, minus W&B's in-process service handle: an earlier in-process
    ``wandb.init`` exports ``WANDB_SERVICE``, and a child attaching to that service writes its run elsewhere."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env.update(LIGHTNING_RETRIEVAL_PLUGIN_PATH=str(REPO / "plugins"), WANDB_MODE="offline", **extra)
    return env


def quiet_trainer(tmp_path, callback, logger=False, **kw):
    """A Trainer for in-process tests: one callback; no progress bar, checkpoints, sanity steps or summary."""
    import lightning.pytorch as pl

    return pl.Trainer(
        logger=logger,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        enable_model_summary=False,
        **kw,
    )


def run_cli(*args: str, cwd, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m lightning_retrieval ARGS`` in ``cwd`` with a clean environment; asserts success by default."""
    out = subprocess.run(
        [sys.executable, "-m", "lightning_retrieval", *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def movielens_dm():
    """The embedded MovieLens data, prepared once (leave-last-out split)."""
    from lightning_retrieval.data import MovieLensSource, RetrievalDataModule

    dm = RetrievalDataModule(source=MovieLensSource(), max_history=20, batch_size=256, eval_batch_size=256)
    dm.setup("fit")
    return dm


def make_raw(n_users=6, n_items=12, per_user=8, seed=0, topics=True):
    """Small synthetic interactions with distinct timestamps per user."""
    from lightning_retrieval.data.schema import RawInteractions

    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, size=per_user, replace=False)
        times = np.sort(rng.choice(10_000, size=per_user, replace=False))
        rows += [(f"u{u}", int(i), int(t), float(rng.integers(1, 6))) for i, t in zip(items, times)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"]).sample(frac=1, random_state=seed)
    items = pd.DataFrame({"item_id": np.arange(n_items)})
    if topics:
        items["topics"] = [[f"t{i % 3}"] + ([f"t{(i + 1) % 3}"] if i % 2 else []) for i in range(n_items)]
    return RawInteractions(interactions=inter.reset_index(drop=True), items=items)
