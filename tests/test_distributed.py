"""Distributed training on CPU (gloo): cross-process negatives make N processes x B equal 1 process x N*B."""

import os

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from lightning_retrieval.losses import SampledSoftmaxLoss

from conftest import REPO, run_cli


def _batch():
    g = torch.Generator().manual_seed(0)
    u = F.normalize(torch.randn(8, 4, generator=g), dim=-1)
    v = F.normalize(torch.randn(8, 4, generator=g), dim=-1)
    ids = torch.tensor([0, 1, 2, 3, 4, 1, 6, 7])  # item 1 twice, on different ranks: masked across ranks too
    return u, v, ids, torch.log(torch.rand(8, generator=g))


def _rank_loss(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    u, v, ids, logq = _batch()
    half = slice(rank * 4, rank * 4 + 4)
    v = v.clone().requires_grad_(True)
    loss = SampledSoftmaxLoss(temperature=0.1, learn_temperature=False)(u[half], v[half], ids[half], logq[half])
    loss.backward()
    grad = v.grad.clone()
    total = loss.detach().clone()
    dist.all_reduce(total)
    dist.all_reduce(grad)  # what DDP does to gradients (sum here, mean below)
    out[rank] = torch.cat([(total / 2).reshape(1), (grad / 2).flatten()])
    dist.destroy_process_group()


def test_gathered_loss_and_gradients_equal_the_full_batch():
    u, v, ids, logq = _batch()
    v = v.clone().requires_grad_(True)
    full = SampledSoftmaxLoss(temperature=0.1, learn_temperature=False)(u, v, ids, logq)
    full.backward()
    out = mp.get_context("spawn").Manager().dict()
    mp.spawn(_rank_loss, args=(29500 + os.getpid() % 400, out), nprocs=2)
    for rank in (0, 1):
        torch.testing.assert_close(out[rank][0], full.detach())
        torch.testing.assert_close(out[rank][1:].view(8, 4), v.grad)


@pytest.mark.slow
def test_two_process_ddp_follows_the_one_process_loss_trajectory(tmp_path):
    config = tmp_path / "no_dropout.yaml"
    config.write_text((REPO / "configs/two_tower.yaml").read_text().replace("dropout: 0.1", "dropout: 0.0"))
    common = [
        "--trainer.max_steps=6",
        "--trainer.limit_val_batches=0",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--data.shuffle=false",
    ]
    losses = {}
    for name, extra in (
        ("one", ["--data.batch_size=256"]),
        (
            "two",
            ["--data.batch_size=128", "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"],
        ),
    ):
        cwd = tmp_path / name
        cwd.mkdir()
        run_cli("fit", "--config", str(config), *common, *extra, cwd=cwd)
        metrics = pd.read_csv(next(cwd.rglob("metrics.csv")))
        losses[name] = metrics["train/loss"].dropna().tolist()
    assert len(losses["one"]) == len(losses["two"]) == 6
    for a, b in zip(losses["one"], losses["two"]):
        assert a == pytest.approx(b, abs=1e-3), (losses["one"], losses["two"])
    assert losses["one"][-1] < losses["one"][0]  # and it trains
