"""Training losses (registry kind ``losses``)."""

from lightning_retrieval.losses.sampled_softmax import RetrievalLoss, SampledSoftmaxLoss

__all__ = ["RetrievalLoss", "SampledSoftmaxLoss"]
