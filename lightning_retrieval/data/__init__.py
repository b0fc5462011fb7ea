"""Interaction data: sources (raw tables), validation, vectorised preparation and the LightningDataModule."""

from lightning_retrieval.data.datamodule import RetrievalDataModule
from lightning_retrieval.data.schema import DataValidationError, RawInteractions
from lightning_retrieval.data.sources import InteractionsFileSource, InteractionSource, MovieLensSource

__all__ = [
    "DataValidationError",
    "InteractionSource",
    "InteractionsFileSource",
    "MovieLensSource",
    "RawInteractions",
    "RetrievalDataModule",
]
