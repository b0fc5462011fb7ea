"""Lightning strategies (``trainer.strategy: torchrec`` shards the ID tables with torchrec)."""

from lightning_retrieval.strategies.torchrec_sharding import TorchrecShardedStrategy

__all__ = ["TorchrecShardedStrategy"]
