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


def _fit_losses(tmp_path, name: str, batch_size: int, *extra: str) -> tuple[list[float], str]:
    """Six steps of the two-tower config (no dropout, no shuffling): the logged losses and the CLI output."""
    config = tmp_path / "no_dropout.yaml"
    if not config.exists():
        text = (REPO / "configs/two_tower.yaml").read_text().replace("dropout: 0.1", "dropout: 0.0")
        config.write_text(text.replace(": base/", f": {REPO / 'configs/base'}/"))  # the shared fragments
    cwd = tmp_path / name
    cwd.mkdir()
    done = run_cli(
        "fit",
        "--config",
        str(config),
        *extra,
        "--trainer.max_steps=6",
        "--trainer.limit_val_batches=0",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--data.shuffle=false",
        f"--data.batch_size={batch_size}",
        cwd=cwd,
    )
    metrics = pd.read_csv(next(cwd.rglob("metrics.csv")))
    return metrics["train/loss"].dropna().tolist(), done.stdout + done.stderr


def _assert_same_trajectory(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        assert x == pytest.approx(y, abs=1e-3), (a, b)


@pytest.fixture(scope="module")
def one_process_losses(tmp_path_factory):
    losses, _ = _fit_losses(tmp_path_factory.mktemp("one"), "one", 256)
    assert losses[-1] < losses[0]  # and it trains
    return losses


@pytest.mark.slow
def test_two_process_ddp_follows_the_one_process_loss_trajectory(tmp_path, one_process_losses):
    two, _ = _fit_losses(
        tmp_path, "two", 128, "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"
    )
    _assert_same_trajectory(one_process_losses, two)


@pytest.mark.slow
def test_torchrec_sharded_tables_follow_the_one_process_trajectory(tmp_path, one_process_losses):
    """Tables sharded table-wise over 2 processes train exactly as the same strategy in 1 process on the
    global batch; checkpoints hold the full tables, which a plain single process can test with."""
    sharded = ["--config", str(REPO / "configs/strategies/torchrec.yaml"), "--trainer.accelerator=cpu"]
    sharded.append("--trainer.strategy.sharding_types=[table_wise]")
    one, _ = _fit_losses(tmp_path, "dmp1", 256, *sharded, "--trainer.devices=1")
    two, log = _fit_losses(tmp_path, "dmp2", 128, *sharded, "--trainer.devices=2")
    _assert_same_trajectory(one, two)
    assert one[0] == pytest.approx(one_process_losses[0], abs=1e-5)  # sharding starts from the same weights
    assert one[-1] < one[0]
    plan = log[log.index("torchrec sharding plan (2 processes)") :].splitlines()[0]
    assert "ranks [0]" in plan and "ranks [1]" in plan, plan  # the tables really are split across processes

    checkpoint = next((tmp_path / "dmp2").rglob("last.ckpt"))
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert state["embeddings.collection.embedding_bags.user_id.weight"].shape == (610, 64)
    assert state["embeddings.collection.embedding_bags.item_id.weight"].shape == (9742, 64)
    done = run_cli(
        "test",
        "--config",
        str(tmp_path / "no_dropout.yaml"),
        "--ckpt_path",
        str(checkpoint),
        "--trainer.enable_progress_bar=false",
        cwd=tmp_path / "dmp2",
    )
    assert "test/recall@50" in done.stdout


def _cpu_strategy(**kwargs):
    from lightning.pytorch.accelerators import CPUAccelerator

    from lightning_retrieval.strategies import TorchrecShardedStrategy

    return TorchrecShardedStrategy(accelerator=CPUAccelerator(), parallel_devices=[torch.device("cpu")], **kwargs)


def test_torchrec_strategy_rejects_bad_settings_naming_the_choices():
    with pytest.raises(ValueError, match="unknown sharding type.*'diagonal'.*table_wise"):
        _cpu_strategy(sharding_types=["diagonal"])
    with pytest.raises(ValueError, match="unknown embedding_optimizer 'lamb'.*rowwise_adagrad"):
        _cpu_strategy(embedding_optimizer="lamb")
    with pytest.raises(ValueError, match="CUDA only.*on CPU use one of"):
        _cpu_strategy(embedding_optimizer="adam")._sharders()


def test_torchrec_strategy_refuses_frozen_tables_and_models_without_tables():
    from lightning_retrieval.models.embeddings import IdEmbeddings

    strategy = _cpu_strategy()
    model = torch.nn.Module()
    with pytest.raises(ValueError, match="has none; use strategy 'ddp'"):
        strategy._check_shardable(model)
    model.embeddings = IdEmbeddings(5, 7, 0, 4)
    model.embeddings.table("user_id").requires_grad_(False)
    with pytest.raises(ValueError, match="frozen ID tables.*user_id.*freeze: false"):
        strategy._check_shardable(model)


def test_torchrec_strategy_is_a_lightning_strategy_name():
    from lightning.pytorch.strategies import StrategyRegistry

    import lightning_retrieval.strategies  # noqa: F401

    assert "torchrec" in StrategyRegistry
