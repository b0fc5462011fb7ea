"""Imports every built-in component module so that each registered subclass is known to the registry."""

import lightning_retrieval.callbacks.conditional_evaluation  # noqa: F401
import lightning_retrieval.callbacks.prediction_writer  # noqa: F401
import lightning_retrieval.callbacks.pretrained_export  # noqa: F401
import lightning_retrieval.callbacks.retrieval_evaluation  # noqa: F401
import lightning_retrieval.callbacks.training_speed  # noqa: F401
import lightning_retrieval.data.negatives  # noqa: F401
import lightning_retrieval.data.sources  # noqa: F401
import lightning_retrieval.data.synthetic  # noqa: F401
import lightning_retrieval.data.synthetic_crosses  # noqa: F401
import lightning_retrieval.losses.hard_negatives  # noqa: F401
import lightning_retrieval.losses.sampled_softmax  # noqa: F401
import lightning_retrieval.metrics.interests  # noqa: F401
import lightning_retrieval.metrics.library  # noqa: F401
import lightning_retrieval.models.conditions  # noqa: F401
import lightning_retrieval.models.crossing  # noqa: F401
import lightning_retrieval.models.interests  # noqa: F401
import lightning_retrieval.models.towers  # noqa: F401
import lightning_retrieval.queries  # noqa: F401
import lightning_retrieval.retrieval.corpus  # noqa: F401
import lightning_retrieval.retrieval.filtering  # noqa: F401
import lightning_retrieval.retrieval.index  # noqa: F401
import lightning_retrieval.retrieval.merging  # noqa: F401
import lightning_retrieval.strategies  # noqa: F401
import lightning_retrieval.tasks.id_pretrain  # noqa: F401
import lightning_retrieval.tasks.popularity  # noqa: F401
import lightning_retrieval.tasks.retrieval  # noqa: F401
