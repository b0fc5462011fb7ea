"""The package's own error types: bad configuration, bad data, unreadable files.

The CLI prints these as one message (no traceback) unless ``LIGHTNING_RETRIEVAL_DEBUG=1`` or ``--debug``;
every other exception is a bug or an environment problem and keeps its traceback.
"""

from __future__ import annotations


class LightningRetrievalError(Exception):
    """Base of the errors whose message alone says what to fix."""


class ConfigError(LightningRetrievalError, ValueError):
    """A configuration value that cannot work (the message names the field and the valid range)."""


class DataError(LightningRetrievalError, ValueError):
    """Input data that cannot be used as given (the message names the file or table)."""


class CheckpointError(LightningRetrievalError, ValueError):
    """A checkpoint or saved file that is empty, corrupt, unsafe or does not match the configured model."""
