"""Interest modules (registry kind ``interests``): a user's history -> K interest embeddings + validity."""

from lightning_retrieval.models.interests.base import InterestModule, farthest_point_order, squash
from lightning_retrieval.models.interests.dcm import DifferentiableClusteringModule
from lightning_retrieval.models.interests.dynamic_routing import DynamicRoutingInterests
from lightning_retrieval.models.interests.preclustering import PreClusteringInterests
from lightning_retrieval.models.interests.self_attention import SelfAttentiveInterests

__all__ = [
    "DifferentiableClusteringModule",
    "DynamicRoutingInterests",
    "InterestModule",
    "PreClusteringInterests",
    "SelfAttentiveInterests",
    "farthest_point_order",
    "squash",
]
