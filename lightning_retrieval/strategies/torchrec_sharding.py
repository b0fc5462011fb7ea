"""Model-parallel ID tables: torchrec's ``DistributedModelParallel`` as a Lightning strategy.

Every ``EmbeddingBagCollection`` in the LightningModule is sharded across the processes (a plan from
torchrec's planner, or the sharding types you name); the rest of the model is data-parallel (DDP). Sharded
tables are trained by torchrec's fused optimizer inside the backward pass, so the LightningModule's own
optimizer only sees the dense parameters (``RetrievalModel.dense_parameters``).

Checkpoints hold full (gathered) tables, so any strategy or a single process can load them, and the fused
optimizer's state (full tensors, ``torchrec_fused_optimizer``), which a resumed sharded ``fit`` copies back into
its shards; after ``fit`` the LightningModule gets its plain tables back with the trained weights.
"""

from __future__ import annotations

from typing import Literal

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

EMBEDDING_OPTIMIZERS = {
    "sgd": "EXACT_SGD",
    "adagrad": "EXACT_ADAGRAD",
    "rowwise_adagrad": "EXACT_ROWWISE_ADAGRAD",
    "adam": "ADAM",  # fbgemm: CUDA only
    "partial_rowwise_adam": "PARTIAL_ROWWISE_ADAM",  # fbgemm: CUDA only
}
CPU_EMBEDDING_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")
SHARDING_TYPES = ("data_parallel", "table_wise", "row_wise", "column_wise", "table_row_wise", "table_column_wise")


def _full_tensor(value):
    """A sharded state-dict value as one full tensor (collective: every process must call it)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        return value.full_tensor().cpu()
    if isinstance(value, ShardedTensor):
        out = torch.empty(value.size(), dtype=value.dtype) if dist.get_rank() == 0 else None
        value.gather(dst=0, out=out)
        full = out if out is not None else torch.empty(value.size(), dtype=value.dtype)
        if dist.get_backend() == "nccl":
            full = full.cuda()
        dist.broadcast(full, src=0)
        return full.cpu()
    return value


def _copy_full_into(target, full: torch.Tensor) -> None:
    """Copy the matching slices of a full tensor into a sharded (``ShardedTensor``/``DTensor``) or plain one."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor, distribute_tensor

    if tuple(target.shape) != tuple(full.shape):
        raise ValueError(f"fused optimizer state of shape {list(full.shape)} cannot fill {list(target.shape)}")
    if isinstance(target, ShardedTensor):
        for shard in target.local_shards():
            offsets, sizes = shard.metadata.shard_offsets, shard.metadata.shard_sizes
            region = tuple(slice(o, o + n) for o, n in zip(offsets, sizes))
            shard.tensor.copy_(full[region].to(shard.tensor))
    elif isinstance(target, DTensor):
        target.to_local().copy_(distribute_tensor(full, target.device_mesh, target.placements).to_local())
    else:
        target.copy_(full.to(target))


class TorchrecShardedStrategy(DDPStrategy):
    """DDP for dense layers plus torchrec model parallelism for the ID tables.

    Args:
        sharding_types: allowed sharding types for every table (None: the planner chooses among what the
            device supports). On CPU torchrec shards ``table_wise``, ``column_wise`` and
            ``table_column_wise``; ``data_parallel`` replicates.
        embedding_optimizer: fused optimizer of the sharded tables: ``sgd``, ``adagrad``,
            ``rowwise_adagrad`` (CPU and GPU), ``adam``, ``partial_rowwise_adam`` (GPU only).
        embedding_lr / embedding_eps / embedding_weight_decay: its hyper-parameters.
        **kwargs: passed to ``DDPStrategy`` (``process_group_backend``, ``find_unused_parameters``, ...).
    """

    strategy_name = "torchrec"

    def __init__(
        self,
        sharding_types: list[str] | None = None,
        embedding_optimizer: Literal["sgd", "adagrad", "rowwise_adagrad", "adam", "partial_rowwise_adam"] = (
            "rowwise_adagrad"
        ),
        embedding_lr: float = 0.01,
        embedding_eps: float = 1e-8,
        embedding_weight_decay: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        unknown = sorted(set(sharding_types or ()) - set(SHARDING_TYPES))
        if unknown:
            raise ValueError(f"unknown sharding type(s) {unknown}; valid: {list(SHARDING_TYPES)}")
        if embedding_optimizer not in EMBEDDING_OPTIMIZERS:
            raise ValueError(
                f"unknown embedding_optimizer {embedding_optimizer!r}; valid: {sorted(EMBEDDING_OPTIMIZERS)}"
            )
        self.sharding_types = list(sharding_types) if sharding_types else None
        self.embedding_optimizer = embedding_optimizer
        self.embedding_lr, self.embedding_eps, self.embedding_weight_decay = (
            embedding_lr,
            embedding_eps,
            embedding_weight_decay,
        )
        self._plain_tables: dict[str, nn.Module] = {}
        self.plan = None

    # ---- wrapping ----
    def _sharders(self):
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

        if self.root_device.type == "cpu" and self.embedding_optimizer not in CPU_EMBEDDING_OPTIMIZERS:
            raise ValueError(
                f"embedding_optimizer {self.embedding_optimizer!r} runs on CUDA only in fbgemm; on CPU use one of "
                f"{list(CPU_EMBEDDING_OPTIMIZERS)}"
            )
        fused = {
            "optimizer": EmbOptimType[EMBEDDING_OPTIMIZERS[self.embedding_optimizer]],
            "learning_rate": self.embedding_lr,
            "eps": self.embedding_eps,
            "weight_decay": self.embedding_weight_decay,
        }
        return [EmbeddingBagCollectionSharder(fused_params=fused)]

    def _check_shardable(self, model: pl.LightningModule) -> dict[str, nn.Module]:
        from torchrec import EmbeddingBagCollection

        tables = {name: m for name, m in model.named_modules() if isinstance(m, EmbeddingBagCollection)}
        if not tables:
            raise ValueError(
                f"strategy 'torchrec' shards EmbeddingBagCollections, and {type(model).__name__} has none; "
                "use strategy 'ddp'"
            )
        frozen = [f"{n}.{p}" for n, m in tables.items() for p, w in m.named_parameters() if not w.requires_grad]
        if frozen:
            raise ValueError(
                f"frozen ID tables {frozen} cannot be sharded: torchrec's fused optimizer updates every sharded "
                "table. Fine-tune them (pretrained_ids.freeze: false) or train with strategy 'ddp'"
            )
        accumulate = self.lightning_module.trainer.accumulate_grad_batches
        if accumulate != 1:
            raise ValueError(
                f"accumulate_grad_batches={accumulate} is not supported by strategy 'torchrec': sharded tables are "
                "updated in every backward pass"
            )
        return tables

    def _setup_model(self, model: nn.Module):
        from torchrec.distributed import DistributedModelParallel
        from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology

        tables = self._check_shardable(model)
        sharders = self._sharders()
        constraints = None
        if self.sharding_types:
            constraints = {
                config.name: ParameterConstraints(sharding_types=self.sharding_types)
                for ebc in tables.values()
                for config in ebc.embedding_bag_configs()
            }
        planner = EmbeddingShardingPlanner(
            topology=Topology(
                world_size=self.world_size,
                compute_device=self.root_device.type,
                local_world_size=self.num_processes,
            ),
            constraints=constraints,
            debug=False,
        )
        self.plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
        rank_zero_info(f"torchrec sharding plan ({self.world_size} processes): {self.plan_summary()}")
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._plain_tables = dict(tables)
        wrapped = DistributedModelParallel(model, device=self.root_device, plan=self.plan, sharders=sharders)
        # the sharded tables start from the module's own weights (seeded init or a restored checkpoint)
        wrapped.load_state_dict(dict(weights))
        return wrapped

    def plan_summary(self) -> dict[str, str]:
        """``{table: "<sharding type> on ranks [...]"}`` of the current plan."""
        return {
            table: f"{sharding.sharding_type} on ranks {sharding.ranks}"
            for module_plan in (self.plan.plan.values() if self.plan else ())
            for table, sharding in module_plan.items()
        }

    def _register_ddp_hooks(self) -> None:  # DDP communication hooks do not apply to the DMP wrapper
        pass

    # ---- checkpoints and teardown ----
    def lightning_module_state_dict(self) -> dict:
        """Full tables (gathered from their shards) and dense weights: loadable without sharding."""
        state = self.lightning_module.state_dict()
        if not self._plain_tables:
            return state
        return {k: _full_tensor(v) for k, v in state.items()}

    def _fused_optimizer(self):
        """torchrec's fused optimizer of the sharded tables (None before wrapping or without sharded tables)."""
        return getattr(self.model, "fused_optimizer", None) if self._plain_tables else None

    def fused_optimizer_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{parameter: {state name: full tensor}}`` of the fused optimizer, gathered from the shards
        (collective: every process calls it); e.g. the row-wise Adagrad momentum ``[rows]`` of every table."""
        fused = self._fused_optimizer()
        if fused is None:
            return {}
        from torch.distributed._shard.sharded_tensor import ShardedTensor
        from torch.distributed.tensor import DTensor

        # each process lists only the states of the shards it holds (table-wise: a table's state lives on its one
        # process), so agree on the global list first, then assemble every tensor in the same order everywhere
        local = {(p, k): v for p, entries in fused.state_dict()["state"].items() for k, v in entries.items()}
        listed: list = [None] * dist.get_world_size()
        dist.all_gather_object(listed, {key: (tuple(v.shape), v.dtype) for key, v in local.items()})
        everywhere = set.intersection(*(set(m) for m in listed))
        shapes = {key: meta for m in listed for key, meta in m.items()}
        out: dict[str, dict[str, torch.Tensor]] = {}
        for key in sorted(shapes):
            value = local.get(key)
            if key in everywhere and isinstance(value, DTensor):
                full = value.full_tensor().cpu()
            elif key in everywhere and not isinstance(value, ShardedTensor):
                full = value.detach().cpu()  # replicated (data-parallel) state
            else:  # disjoint shards: each process writes its own regions, a sum puts them together
                shape, dtype = shapes[key]
                full = torch.zeros(shape, dtype=dtype)
                for shard in value.local_shards() if isinstance(value, ShardedTensor) else []:
                    offsets, sizes = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                    full[tuple(slice(o, o + n) for o, n in zip(offsets, sizes))] = shard.tensor.detach().cpu()
                summed = full.cuda() if dist.get_backend() == "nccl" else full
                dist.all_reduce(summed)
                full = summed.cpu()
            out.setdefault(key[0], {})[key[1]] = full
        return out

    def load_fused_optimizer_state(self, saved: dict[str, dict[str, torch.Tensor]]) -> None:
        """Copy full optimizer-state tensors (from :meth:`fused_optimizer_state`) into this process's shards."""
        fused = self._fused_optimizer()
        if fused is None:
            return
        current = fused.state_dict()
        missing = sorted(
            f"{p}/{k}" for p, entries in current["state"].items() for k in entries if k not in saved.get(p, {})
        )
        if missing:
            raise ValueError(f"the checkpoint's fused optimizer state lacks {missing[:3]}: was it saved by this model?")
        for p, entries in current["state"].items():
            for k, value in entries.items():
                _copy_full_into(value, saved[p][k])
        fused.load_state_dict(current)

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        """Adds the fused optimizer's state (``torchrec_fused_optimizer``, full tensors) so that a resumed sharded
        run continues with the embedding optimizer's accumulators, not from zero."""
        fused_state = self.fused_optimizer_state()  # collective, before only rank 0 writes
        if fused_state:
            checkpoint["torchrec_fused_optimizer"] = fused_state
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def load_optimizer_state_dict(self, checkpoint) -> None:
        super().load_optimizer_state_dict(checkpoint)
        if "torchrec_fused_optimizer" in checkpoint:
            self.load_fused_optimizer_state(checkpoint["torchrec_fused_optimizer"])
        elif self._fused_optimizer() is not None:
            rank_zero_info(
                "the checkpoint has no fused optimizer state (not saved by strategy 'torchrec'): the "
                "sharded tables' optimizer starts from zero"
            )

    def teardown(self) -> None:
        """Put plain tables with the trained weights back into the LightningModule."""
        module = self.lightning_module
        if self._plain_tables and module is not None and dist.is_available() and dist.is_initialized():
            state = self.lightning_module_state_dict()
            for name, plain in self._plain_tables.items():
                parent, _, child = name.rpartition(".")
                setattr(module.get_submodule(parent) if parent else module, child, plain)
            module.load_state_dict(state)
            self._plain_tables = {}
        super().teardown()

    @classmethod
    def register_strategies(cls, strategy_registry) -> None:
        strategy_registry.register(
            cls.strategy_name,
            cls,
            description="torchrec DistributedModelParallel: sharded ID tables, data-parallel dense layers",
        )


if TorchrecShardedStrategy.strategy_name not in StrategyRegistry:
    TorchrecShardedStrategy.register_strategies(StrategyRegistry)
