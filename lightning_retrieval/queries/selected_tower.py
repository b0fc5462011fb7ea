"""Label-aware hard selection with the user tower's graph on the selected interest only.

Hard selection trains one of each user's K tower passes; the other K - 1 rows get zero gradient, yet a K-fold
pass with a graph runs their backward too (a quarter of the user tower's work is useful at K = 4). Here the
K-fold pass runs without a graph, recording its dropout masks, to pick each user's interest; the selected rows
then run again with a graph, replaying their masks. The selected vectors equal the K-fold pass's rows (to float
summation order) and so do all gradients; the random stream advances exactly as in one K-fold pass.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_retrieval.models.dropout_replay import (
    DropoutReplayError,
    record_dropout,
    replay_dropout,
    replay_supported,
)


class ReplayMismatch(RuntimeError):
    """The user tower draws randomness outside ``nn.Dropout`` or calls its dropout layers differently for the
    selected rows: two passes cannot stand for one (the random stream has been rewound)."""


def hard_choice(users: torch.Tensor, valid: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """``[B]`` index of the valid query ``users [B, K, D]`` that scores the target ``items [B, D]`` highest."""
    scores = torch.einsum("bkd,bd->bk", users, items).masked_fill(~valid, float("-inf"))
    return scores.argmax(1)


def selected_users(encoder, batch, interests: torch.Tensor, valid: torch.Tensor, items: torch.Tensor):
    """The hard-selected user vectors ``[B, D]`` (graph over the selected interests only), or None where this
    path does not apply and the caller must run the K-fold pass with a graph: no graph wanted, K = 1, not on CPU
    (other devices draw dropout masks in fused kernels), an encoder that is not a module or whose layers a
    second pass would change (:func:`replay_supported`). Raises :class:`ReplayMismatch` for randomness outside
    ``nn.Dropout`` in the user tower, found when the replaying pass draws from the random stream; the stream is
    then rewound, so the caller's K-fold pass draws what it would have drawn.

    ``interests [B, K, D]`` (with graph), ``valid [B, K]``, ``items [B, D]`` the targets' item vectors."""
    b, k = valid.shape
    if not torch.is_grad_enabled() or k == 1 or interests.device.type != "cpu" or not isinstance(encoder, nn.Module):
        return None
    if not replay_supported(encoder):
        return None
    start = torch.get_rng_state()
    with torch.no_grad(), record_dropout(encoder) as masks:
        every = encoder.encode_users(batch, interests)  # [B, K, D]
    recorded = torch.get_rng_state()
    pick = hard_choice(every, valid, items.detach())
    rows = torch.arange(b, device=pick.device) * k + pick  # the K-fold pass's row of each selected query
    chosen = interests[torch.arange(b, device=pick.device), pick][:, None]  # [B, 1, D]
    try:
        with replay_dropout(encoder, masks, rows):
            users = encoder.encode_users(batch, chosen)[:, 0]
        drew = not torch.equal(torch.get_rng_state(), recorded)
    except DropoutReplayError:
        drew = True
    if drew:
        torch.set_rng_state(start)
        raise ReplayMismatch("the user tower's randomness is not all in nn.Dropout layers")
    return users
