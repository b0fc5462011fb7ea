"""lightning-retrieval: embedding-based retrieval research for recommender systems on PyTorch Lightning."""

__version__ = "0.1.0"
