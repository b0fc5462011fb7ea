"""Training regularisers of multi-interest queries (registry kind ``interest_regularizers``).

The ``interests`` query kind takes a list of them (``regularizers:`` in YAML); after each training forward of its
interest module it calls every regulariser and adds ``weight * value`` to the loss as a
:class:`~lightning_retrieval.queries.base.QueryPenalty`. A plugin regulariser subclasses
:class:`InterestRegularizer`, registers a name and is picked by it from YAML like the built-in one.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_retrieval.models.interests.base import InterestModule
from lightning_retrieval.registry import component_kind, register


@component_kind("interest_regularizers")
class InterestRegularizer(nn.Module):
    """``forward(module, interests [B, K, D], valid [B, K], mask [B, L]) -> scalar`` penalty (before ``weight``).

    ``module`` is the interest module right after its forward (``module.last_routing()`` is that call's routing);
    ``requires_routing`` says the regulariser reads it, so an interest module without one is refused at
    construction (:meth:`check_module`).

    Args:
        weight: the penalty's weight in the loss (lambda).
    """

    requires_routing: bool = False

    def __init__(self, weight: float = 1.0):
        super().__init__()
        if weight < 0:
            raise ValueError(f"a regulariser weight must be >= 0, got {weight}")
        self.weight = weight

    @property
    def name(self) -> str:
        return type(self).__dict__.get("registry_name", type(self).__name__)

    def check_module(self, module: InterestModule) -> None:
        """Refuse an interest module the regulariser cannot work with (clear error naming both)."""
        if self.requires_routing and not module.exposes_routing:
            raise ValueError(
                f"regulariser {self.name!r} needs the interest module's routing matrix [B, K, L], and "
                f"{type(module).__name__} exposes none; use it with dcm, multihead_attention or a module that sets "
                "exposes_routing = True and InterestModule.routing"
            )

    def forward(
        self, module: InterestModule, interests: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError


def routing_concentration(routing: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """How far each interest's composition is from uniform over the user's history: ``[B, K, L], [B, L] -> [B, K]``.

    Row k of ``routing`` is normalised over the valid positions into ``p_k`` (what interest k is made of); the
    result is ``Σ_l (p_kl - 1/n)² = Σ_l p_kl² - 1/n`` over the ``n`` valid positions (the centred second moment
    that REMI's routing regularisation takes the diagonal of). 0 when interest k draws evenly on every item,
    ``1 - 1/n`` when it collapsed onto one item; 0 for rows with no routing mass and users with < 2 items.
    """
    weights = routing * mask[:, None, :]
    total = weights.sum(-1, keepdim=True)
    p = weights / total.clamp(min=torch.finfo(weights.dtype).tiny)
    n = mask.sum(1, keepdim=True).to(routing.dtype)  # [B, 1]
    spread = (p * p).sum(-1) - 1.0 / n.clamp(min=1)
    return torch.where((total[..., 0] > 0) & (n > 1), spread, torch.zeros_like(spread))


@register("routing_regularization")
class RoutingRegularization(InterestRegularizer):
    """REMI's routing regularisation (Xie et al., RecSys 2023) against routing collapse: an interest built from a
    single history item carries no more than that item.

    Penalty = mean over users of ``Σ_{valid k} c_k²``, ``c_k`` the :func:`routing_concentration` of interest k
    (REMI squares the diagonal of the routing matrix's centred covariance the same way, so nearly uniform rows
    cost almost nothing and collapsed rows cost the most). Differences to REMI's formula: rows are normalised
    over the *valid* positions (padding never counts), the penalty is averaged over users instead of summed
    over the batch and is not divided by the embedding width, so ``weight`` does not depend on batch size or D.

    Needs a routing matrix with gradient: dcm (its assignment) and multihead_attention (its attention) have one;
    dynamic_routing's coupling is computed without gradient (as in MIND/ComiRec), which is refused when training.
    """

    requires_routing = True

    def forward(self, module, interests, valid, mask) -> torch.Tensor:
        routing = module.last_routing()
        if torch.is_grad_enabled() and not routing.requires_grad:
            raise ValueError(
                f"{type(module).__name__}'s routing matrix carries no gradient, so {self.name!r} cannot train it "
                "(dynamic routing detaches its routing logits, as in MIND/ComiRec); use dcm or multihead_attention"
            )
        concentration = routing_concentration(routing, mask) * valid
        return (concentration * concentration).sum(1).mean()
