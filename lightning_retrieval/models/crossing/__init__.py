"""Feature-crossing blocks (registry kind ``crossing``): ``[B, F, D]`` fields -> ``[B, output_dim]``."""

from lightning_retrieval.models.crossing.base import CrossingBlock, CrossingFactory
from lightning_retrieval.models.crossing.dcnv2 import DCNv2Crossing
from lightning_retrieval.models.crossing.dhen import DHENCrossing
from lightning_retrieval.models.crossing.masknet import MaskNetCrossing
from lightning_retrieval.models.crossing.mlp import MLPCrossing
from lightning_retrieval.models.crossing.transformer import TransformerCrossing

__all__ = [
    "CrossingBlock",
    "CrossingFactory",
    "DCNv2Crossing",
    "DHENCrossing",
    "MLPCrossing",
    "MaskNetCrossing",
    "TransformerCrossing",
]
