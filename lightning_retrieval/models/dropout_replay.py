"""Record the dropout masks of one forward pass and replay them in a second pass over a subset of its rows.

Label-aware hard selection runs the user tower on all K interests of a user but trains only the selected one:
the K-fold pass can run without a graph (:func:`record_dropout`) and the selected rows again with one
(:func:`replay_dropout`), each ``nn.Dropout`` reusing the mask it drew in the first pass. Masks are drawn exactly
as ``F.dropout`` draws them on CPU (``empty_like(x).bernoulli_(1 - p).div_(1 - p)``, then ``x * mask``), so the
first pass consumes the random stream as the stock layer does and both passes give the stock values.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.dropout import _DropoutNd


class DropoutReplayError(RuntimeError):
    """The replaying pass made other dropout calls than the recorded one."""


def replay_supported(module: nn.Module) -> bool:
    """Whether two passes of ``module`` can stand for one: no training-mode dropout other than ``nn.Dropout``
    (feature or alpha dropout draw differently) and no training-mode batch/instance norm: batch statistics over
    B x K rows differ from those over the B selected rows (even without running statistics), and running
    statistics would be updated twice. The tower must treat rows independently (every stock layer but these
    norms does). Randomness outside ``nn.Dropout`` modules (a functional dropout) is caught after the fact by the
    caller, which compares the random state."""
    for m in module.modules():
        if isinstance(m, _DropoutNd) and type(m) is not nn.Dropout and m.training and m.p > 0:
            return False
        if isinstance(m, _NormBase) and m.training:
            return False
    return True


def _dropouts(module: nn.Module) -> list[nn.Dropout]:
    return [m for m in module.modules() if type(m) is nn.Dropout]


def _draws(layer: nn.Dropout, x: torch.Tensor) -> bool:
    """Whether ``F.dropout`` draws a mask here (it returns the input as it is for p = 0, eval or empty input)."""
    return layer.training and layer.p > 0 and x.numel() > 0


def _apply(layer: nn.Dropout, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x.mul_(mask) if layer.inplace else x * mask


@contextmanager
def _patched(module: nn.Module, forward_of) -> Iterator[None]:
    layers = _dropouts(module)
    for layer in layers:
        layer.forward = forward_of(layer)  # instance attribute: nn.Module.__call__ calls it
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


@contextmanager
def record_dropout(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While active, every ``nn.Dropout`` in ``module`` draws its scaled mask as ``F.dropout`` does on CPU and
    appends it to the yielded list (call order)."""
    masks: list[torch.Tensor] = []

    def forward_of(layer):
        def forward(x):
            if not _draws(layer, x):
                return x
            mask = torch.empty_like(x) if layer.p < 1 else torch.zeros_like(x)
            if layer.p < 1:
                mask.bernoulli_(1 - layer.p).div_(1 - layer.p)
            masks.append(mask)
            return _apply(layer, x, mask)

        return forward

    with _patched(module, forward_of):
        yield masks


@contextmanager
def replay_dropout(module: nn.Module, masks: list[torch.Tensor], rows: torch.Tensor) -> Iterator[None]:
    """While active, every ``nn.Dropout`` in ``module`` multiplies by the next recorded mask instead of drawing
    one: as recorded for an input of the recorded shape, its rows ``rows`` for an input with ``len(rows)`` rows
    (the recorded pass ran on more rows). Raises :class:`DropoutReplayError` if the calls do not match the
    recording."""
    remaining = iter(masks)

    def forward_of(layer):
        def forward(x):
            if not _draws(layer, x):
                return x
            mask = next(remaining, None)
            if mask is None:
                raise DropoutReplayError("dropout replay: more dropout calls than were recorded")
            if mask.shape != x.shape:
                mask = mask[rows]
            if mask.shape != x.shape:
                raise DropoutReplayError(f"dropout replay: recorded mask {list(mask.shape)} for input {list(x.shape)}")
            return _apply(layer, x, mask)

        return forward

    with _patched(module, forward_of):
        yield
    if next(remaining, None) is not None:
        raise DropoutReplayError("dropout replay: fewer dropout calls than were recorded")
