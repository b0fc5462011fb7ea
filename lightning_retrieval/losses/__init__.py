"""Training losses (registry kind ``losses``)."""

from lightning_retrieval.losses.hard_negatives import HardNegativeSoftmaxLoss, hard_negative_log_weights
from lightning_retrieval.losses.sampled_softmax import RetrievalLoss, SampledSoftmaxLoss

__all__ = ["HardNegativeSoftmaxLoss", "RetrievalLoss", "SampledSoftmaxLoss", "hard_negative_log_weights"]
