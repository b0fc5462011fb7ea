"""Lightning callbacks (registry kind ``callbacks``)."""

from lightning_retrieval.callbacks.base import RetrievalCallback
from lightning_retrieval.callbacks.prediction_writer import TopKPredictionWriter
from lightning_retrieval.callbacks.retrieval_evaluation import RetrievalEvaluation
from lightning_retrieval.callbacks.training_speed import TrainingSpeed

__all__ = ["RetrievalCallback", "RetrievalEvaluation", "TopKPredictionWriter", "TrainingSpeed"]
