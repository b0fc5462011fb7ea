"""A seeded synthetic dataset whose relevance lives in feature *crosses* (registry ``datasets``: ``synthetic_crosses``).

Users have categorical features ``segment``, ``region`` and ``device``; items ``category``, ``style`` and ``brand``;
each takes ``num_values`` (K) values. Two tastes decide what a user interacts with:

- main effect: a user likes items whose ``category`` equals their ``segment``;
- cross: a user's cross type is ``(segment + region) mod K``, an item's is ``(category + style) mod K``; a user
  likes items of their own cross type.

An interaction picks an item cell ``(category, style)`` with probability proportional to
``exp(sharpness * ((1 - cross_strength) * main + cross_strength * cross))``, then an item of that cell uniformly;
with probability ``noise`` it picks a uniform random item instead. ``device`` and ``brand`` carry no signal.

Every (segment, region) pair and every (category, style) cell is equally frequent, so at ``cross_strength=1`` no
single user feature says anything about any single item feature of the interacted items (nor about a pair of
them): only the crossed pairs do. Each tower must cross two of its fields to find the type, which is where a
crossing block should beat a plain MLP. :func:`feature_associations` measures this on the generated interactions.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import pandas as pd

from lightning_retrieval.data.features import RawSideFeatures, SideFeatureSpec
from lightning_retrieval.data.schema import RawInteractions
from lightning_retrieval.data.sources import InteractionSource
from lightning_retrieval.errors import ConfigError
from lightning_retrieval.registry import register
from lightning_retrieval.validation import non_negative_int, positive_int

USER_FEATURES = ("segment", "region", "device")
ITEM_FEATURES = ("category", "style", "brand")


@register("synthetic_crosses")
class SyntheticCrossesSource(InteractionSource):
    """Users and items with categorical features; relevance is a mix of a main effect and a planted cross.

    Args:
        cross_strength: share of the preference signal in the cross, in [0, 1] (0: main effect only).
        num_users / num_items: table sizes; ``num_items >= num_values ** 2`` so every cell has items.
        interactions_per_user: interactions of every user (leave-last-out needs at least 3).
        num_values: K, values of every feature.
        sharpness: strength of the preference (logit of a liked cell over the others).
        noise: probability that an interaction is a uniform random item.
        seed: the data depend on this seed and the arguments only.
        side_features: offer the six features to the model (False: the same interactions, IDs only, a control).
    """

    def __init__(
        self,
        cross_strength: float = 1.0,
        num_users: int = 2000,
        num_items: int = 2000,
        interactions_per_user: int = 20,
        num_values: int = 4,
        sharpness: float = 3.0,
        noise: float = 0.1,
        seed: int = 0,
        side_features: bool = True,
    ):
        if not 0.0 <= cross_strength <= 1.0:
            raise ConfigError(f"synthetic_crosses.cross_strength must be in [0, 1], got {cross_strength}")
        if not 0.0 <= noise <= 1.0:
            raise ConfigError(f"synthetic_crosses.noise must be in [0, 1], got {noise}")
        if sharpness < 0:
            raise ConfigError(f"synthetic_crosses.sharpness must be >= 0, got {sharpness}")
        self.num_values = positive_int("synthetic_crosses.num_values", num_values)
        self.num_users = positive_int("synthetic_crosses.num_users", num_users)
        self.num_items = positive_int("synthetic_crosses.num_items", num_items)
        if self.num_items < self.num_values**2:
            raise ConfigError(
                f"synthetic_crosses.num_items must be >= num_values ** 2 = {self.num_values**2} (every "
                f"(category, style) cell needs an item), got {num_items}"
            )
        self.interactions_per_user = positive_int("synthetic_crosses.interactions_per_user", interactions_per_user)
        self.cross_strength, self.sharpness, self.noise = float(cross_strength), float(sharpness), float(noise)
        self.seed = non_negative_int("synthetic_crosses.seed", seed)
        self.offers_side_features = side_features

    @cached_property
    def _tables(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """``(interactions, users, items)``: generated once per source object."""
        rng = np.random.default_rng(self.seed)
        k, n_users, n_items = self.num_values, self.num_users, self.num_items
        # balanced pairs: each (segment, region) and (category, style) equally frequent (up to one remainder)
        user_pair = rng.permutation(np.arange(n_users) % (k * k))
        item_cell = rng.permutation(np.arange(n_items) % (k * k))
        users = pd.DataFrame(
            {
                "user_id": np.arange(n_users),
                "segment": user_pair // k,
                "region": user_pair % k,
                "device": rng.integers(k, size=n_users),
            }
        )
        items = pd.DataFrame(
            {
                "item_id": np.arange(n_items),
                "category": item_cell // k,
                "style": item_cell % k,
                "brand": rng.integers(k, size=n_items),
            }
        )
        logits = self._cell_logits()
        n = self.interactions_per_user
        user = np.repeat(np.arange(n_users), n)
        gumbel = rng.gumbel(size=(len(user), k * k))
        cell = np.argmax(logits[user_pair[user]] + gumbel, axis=1)  # Gumbel-max: one cell per interaction
        items_by_cell = np.argsort(item_cell, kind="stable")
        cell_offsets = np.zeros(k * k + 1, dtype=np.int64)
        np.cumsum(np.bincount(item_cell, minlength=k * k), out=cell_offsets[1:])
        size = cell_offsets[cell + 1] - cell_offsets[cell]
        item = items_by_cell[cell_offsets[cell] + (rng.random(len(user)) * size).astype(np.int64)]
        random_pick = rng.random(len(user)) < self.noise
        item[random_pick] = rng.integers(n_items, size=int(random_pick.sum()))
        start = rng.integers(0, 10**6, size=n_users)
        timestamp = start[user] + np.tile(np.arange(n), n_users) * 60 + rng.integers(0, 60, size=len(user))
        interactions = pd.DataFrame({"user_id": user, "item_id": item, "timestamp": timestamp.astype(np.int64)})
        return interactions, users, items

    def _cell_logits(self) -> np.ndarray:
        """``[K*K, K*K]`` logit of item cell ``category * K + style`` for user pair ``segment * K + region``."""
        k = self.num_values
        cells = np.arange(k * k)
        first, cross_type = cells // k, (cells // k + cells % k) % k  # segment / category, and the cross type
        main = (first[:, None] == first[None, :]).astype(np.float64)
        crossed = (cross_type[:, None] == cross_type[None, :]).astype(np.float64)
        return self.sharpness * ((1.0 - self.cross_strength) * main + self.cross_strength * crossed)

    def interaction_probabilities(self) -> np.ndarray:
        """``[num_users, num_items]`` the generating probability of each item in a user's interaction: what an
        oracle would rank by (the ceiling of any model on these data)."""
        _, users, items = self._tables
        k = self.num_values
        logits = self._cell_logits()
        cell_probs = np.exp(logits - logits.max(1, keepdims=True))
        cell_probs /= cell_probs.sum(1, keepdims=True)
        user_pair = (users["segment"] * k + users["region"]).to_numpy()
        item_cell = (items["category"] * k + items["style"]).to_numpy()
        cell_size = np.bincount(item_cell, minlength=k * k)
        chosen = cell_probs[user_pair][:, item_cell] / cell_size[item_cell]
        return (1.0 - self.noise) * chosen + self.noise / self.num_items

    def load(self) -> RawInteractions:
        interactions, _, items = self._tables
        return RawInteractions(interactions=interactions, items=items[["item_id"]], name=self._name)

    def side_features(self) -> RawSideFeatures | None:
        if not self.offers_side_features:
            return None
        _, users, items = self._tables
        return RawSideFeatures(
            users=users,
            items=items,
            user_specs=[SideFeatureSpec(c) for c in USER_FEATURES],
            item_specs=[SideFeatureSpec(c) for c in ITEM_FEATURES],
        )

    def user_attributes(self) -> pd.DataFrame:
        """``user_id`` with the planted ``segment`` and ``region`` (results can be segmented by them)."""
        return self._tables[1][["user_id", "segment", "region"]]

    @property
    def _name(self) -> str:
        return f"synthetic_crosses:s{self.cross_strength:g}:seed{self.seed}"

    def describe(self) -> str:
        return (
            f"synthetic crosses (cross_strength={self.cross_strength:g}, {self.num_users} users, {self.num_items} "
            f"items, K={self.num_values}, seed={self.seed}{'' if self.offers_side_features else ', IDs only'})"
        )


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Plug-in mutual information in bits between two non-negative integer codes ``[M]``."""
    a_codes, a = np.unique(a, return_inverse=True)
    b_codes, b = np.unique(b, return_inverse=True)
    joint = np.bincount(a * len(b_codes) + b, minlength=len(a_codes) * len(b_codes)).reshape(len(a_codes), -1)
    p = joint / joint.sum()
    outer = p.sum(1, keepdims=True) * p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log2(p[nz] / outer[nz])).sum())


def feature_associations(source: SyntheticCrossesSource) -> dict[str, float]:
    """Mutual information (bits) over the generated interactions between user and item features.

    ``main``: the largest over single user feature x single item feature; ``pair_vs_single``: the largest over a
    pair of user features x a single item feature (and single x pair); ``cross``: (segment, region) x
    (category, style).
    """
    interactions, users, items = source._tables
    u = users.set_index("user_id").loc[interactions["user_id"].to_numpy()]
    i = items.set_index("item_id").loc[interactions["item_id"].to_numpy()]
    k = source.num_values
    main = max(mutual_information(u[a].to_numpy(), i[b].to_numpy()) for a in USER_FEATURES for b in ITEM_FEATURES)
    user_pair = (u["segment"] * k + u["region"]).to_numpy()
    item_pair = (i["category"] * k + i["style"]).to_numpy()
    pair_vs_single = max(
        [mutual_information(user_pair, i[b].to_numpy()) for b in ITEM_FEATURES]
        + [mutual_information(u[a].to_numpy(), item_pair) for a in USER_FEATURES]
    )
    return {"main": main, "pair_vs_single": pair_vs_single, "cross": mutual_information(user_pair, item_pair)}
