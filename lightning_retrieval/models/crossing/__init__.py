"""Feature-crossing blocks (registry kind ``crossing``): ``[B, F, D]`` fields -> ``[B, output_dim]``."""

from lightning_retrieval.models.crossing.base import CrossingBlock, CrossingFactory
from lightning_retrieval.models.crossing.mlp import MLPCrossing

__all__ = ["CrossingBlock", "CrossingFactory", "MLPCrossing"]
