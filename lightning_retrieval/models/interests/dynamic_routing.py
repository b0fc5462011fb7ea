"""Behaviour-to-interest dynamic routing (MIND, Li et al. 2019 / ComiRec-DR, Cen et al. 2020)."""

from __future__ import annotations

import torch
from torch import nn

from lightning_retrieval.models.interests.base import InterestModule, interests_supported, recency_rank, squash
from lightning_retrieval.registry import register

BILINEAR = ("per_interest", "shared")
INITS = ("random", "zeros")


@register("dynamic_routing")
class DynamicRoutingInterests(InterestModule):
    """Capsule routing with accumulated logits: ``w_lk = softmax_k(b_lk)``, ``c_k = squash(Σ_l w_lk S_k e_l)``,
    ``b_lk += c_k · S_k e_l`` (no gradient through the logits, as in MIND/ComiRec).

    Unlike DCM, the routing logits are accumulated, not recomputed from centroids, and every item feeds every
    capsule (soft routing). What breaks the symmetry between capsules:

    - ``bilinear: per_interest`` (ComiRec-DR): one map ``S_k`` per interest, ``[K, D, D]``; ``shared`` (MIND):
      one ``S`` for all interests.
    - ``init: random`` (MIND): initial logits ``b_lk ~ N(0, init_std²)``. They are drawn once, at construction,
      from a generator seeded with ``seed`` and stored as a buffer ``[max_length, K]`` indexed by the item's
      recency rank (0 = most recent valid item): training, evaluation and serving see the same logits, no
      global RNG is touched and padding cannot shift them. ``zeros`` (ComiRec-DR) starts uniform.

    With ``init: zeros`` and identical maps every capsule is ``squash(Σ_l S e_l / K)`` at every iteration (pairwise
    cosine 1): ``shared`` + ``zeros`` is rejected, and ``per_interest`` + ``zeros`` needs ``bilinear_init: normal``.

    The maps act on pooled vectors (``S_k Σ_l w_lk e_l``, ``(S_k^T c_k) · e_l``), never on every history item: no
    ``[B, K, L, D]`` tensor of mapped items is formed (it was 6.5M floats at batch 512, history 50, K = 4).

    ``routing_mass`` ``[B, K]`` holds ``Σ_l w_lk`` of the last iteration after each call (0 for invalid slots).

    Args:
        bilinear_init: ``identity`` (every ``S_k = I``: interests start in the item space) or ``normal``
            (``N(0, 1/D)`` entries, seeded; ComiRec-DR draws its maps at random).
        max_length: most valid history items a user may have (rows of the logit buffer).
        adaptive_k: MIND's per-user interest count ``K_u = max(1, min(K, floor(log2 n_u)))``; slots beyond
            ``K_u`` are invalid. In any case slot ``k`` is invalid for users with ``n_u <= k`` items.
    """

    exposes_routing = True

    def __init__(
        self,
        embedding_dim: int,
        num_interests: int = 4,
        iterations: int = 3,
        bilinear: str = "per_interest",
        init: str = "random",
        init_std: float = 1.0,
        bilinear_init: str = "identity",
        seed: int = 0,
        max_length: int = 512,
        adaptive_k: bool = False,
    ):
        super().__init__(embedding_dim, num_interests)
        if bilinear not in BILINEAR:
            raise ValueError(f"bilinear must be one of {BILINEAR}, got {bilinear!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if bilinear_init not in ("identity", "normal"):
            raise ValueError(f"bilinear_init must be 'identity' or 'normal', got {bilinear_init!r}")
        if iterations < 1 or max_length < 1 or init_std <= 0:
            raise ValueError(
                f"need iterations >= 1, max_length >= 1 and init_std > 0; got {iterations}, {max_length}, {init_std}"
            )
        identical_maps = bilinear == "shared" or bilinear_init == "identity"
        if init == "zeros" and identical_maps and num_interests > 1:
            raise ValueError(
                f"init='zeros' with {'one shared map' if bilinear == 'shared' else 'identity maps'} makes all "
                "K capsules identical (uniform routing stays uniform); use init='random', or bilinear='per_interest' "
                "with bilinear_init='normal'"
            )
        self.iterations, self.bilinear, self.init, self.adaptive_k = iterations, bilinear, init, adaptive_k
        generator = torch.Generator().manual_seed(seed)
        maps = num_interests if bilinear == "per_interest" else 1
        if bilinear_init == "identity":
            weight = torch.eye(embedding_dim).expand(maps, -1, -1).clone()
        else:
            weight = torch.randn(maps, embedding_dim, embedding_dim, generator=generator) / embedding_dim**0.5
        self.S = nn.Parameter(weight)  # [K or 1, D_out, D_in]
        logits = torch.randn(max_length, num_interests, generator=generator) * init_std
        self.register_buffer("initial_logits", logits if init == "random" else torch.zeros_like(logits))

    def forward(self, history: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``history [B, L, D]``, ``mask [B, L]`` -> ``(interests [B, K, D], valid [B, K])``."""
        self.check_input(history, mask)
        n = mask.sum(1)
        max_length = self.initial_logits.shape[0]
        if history.shape[1] > max_length and int(n.max()) > max_length:
            raise ValueError(f"a history has {int(n.max())} valid items, more than max_length={max_length}")
        logits = self.initial_logits[recency_rank(mask)].transpose(1, 2)  # [B, K, L]
        keep = mask[:, None, :].to(history.dtype)
        for step in range(self.iterations):
            weights = torch.softmax(logits, dim=1) * keep  # over capsules; padding feeds no capsule
            last = step == self.iterations - 1
            with torch.set_grad_enabled(torch.is_grad_enabled() and last):  # only the last capsules are trained
                capsules = squash(self.apply_maps(torch.bmm(weights, history)))  # S_k Σ_l w_kl e_l
            if not last:  # routing logits carry no gradient (as in MIND/ComiRec)
                with torch.no_grad():
                    logits = logits + self._agreement(capsules, history)
        valid = interests_supported(mask, self.num_interests)
        if self.adaptive_k:
            k_user = torch.clamp(torch.floor(torch.log2(n.clamp(min=1).float())), 1, self.num_interests).long()
            valid &= torch.arange(self.num_interests, device=n.device)[None] < k_user[:, None]
        self.routing = weights  # [B, K, L] coupling of the last iteration, for routing regularisers
        self.routing_mass = (weights.sum(2) * valid).detach()  # [B, K] Σ_l w_lk of the last iteration
        return capsules * valid[:, :, None], valid

    def apply_maps(self, vectors: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """``S_k v_k`` (``S_k^T v_k`` if ``transpose``) for ``vectors [B, K, D]`` -> ``[B, K, D]``: one batched
        matmul over the K maps (one ``[B*K, D] x [D, D]`` product for a shared map)."""
        maps = self.S if transpose else self.S.transpose(1, 2)  # [K or 1, D_in, D_out] acting on rows
        if maps.shape[0] == 1:
            return vectors @ maps[0]
        return torch.bmm(vectors.transpose(0, 1), maps).transpose(0, 1)

    def _agreement(self, capsules: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """``c_k · S_k e_l = (S_k^T c_k) · e_l``: capsules ``[B, K, D]``, history ``[B, L, D]`` -> ``[B, K, L]``
        (a transposed view of ``[B, L, K]``: that product is ~2x faster on CPU than ``[B, K, D] x [B, D, L]``)."""
        return torch.bmm(history, self.apply_maps(capsules, transpose=True).transpose(1, 2)).transpose(1, 2)
