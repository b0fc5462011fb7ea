"""A generated multi-interest dataset (registry ``datasets``: ``synthetic_interests``): no download, one seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lightning_retrieval.data.schema import RawInteractions
from lightning_retrieval.data.sources import InteractionSource
from lightning_retrieval.registry import register


@dataclass(frozen=True)
class _Planted:
    item_weight: np.ndarray  # [N] unnormalised popularity weight of each item id inside its cluster
    user_clusters: np.ndarray  # [U, M] each user's planted clusters, -1 past the user's k_u


@register("synthetic_interests")
class SyntheticInterestsSource(InteractionSource):
    """Users with planted interests over item clusters; everything follows from ``seed``.

    1. Items are split into ``num_clusters`` clusters of (almost) equal size; inside a cluster, item popularity
       follows a Zipf law ``p ∝ rank^-popularity_skew`` (0 = uniform) over a random ranking.
    2. Each user gets ``k_u`` interests, uniform in ``[min_interests, max_interests]``: distinct clusters drawn
       uniformly, and ``n_u`` interactions, uniform in ``[min_interactions, max_interactions]``.
    3. Time order: the user's interactions come in sessions whose lengths are geometric with mean
       ``session_length`` (1 = every interaction draws its interest afresh, larger = interests in runs); each
       session picks one of the user's interests uniformly.
    4. The items of a (user, interest) pair are drawn from that cluster without replacement, in proportion to
       popularity (no item repeats within a user); timestamps are a user's start time plus exponential gaps.

    Items get their cluster as topic ``c<id>`` (``cluster_topics``), like genres; the users' planted interests
    are not features but :meth:`user_attributes` (``num_interests``: distinct clusters the user actually
    interacted with; ``planted_interests``: ``k_u``), for segmenting results.

    A single embedding must fail when a user's clusters cannot all be near one vector and the targets are not
    simply the few unseen items of those clusters: many clusters (more than the embedding dimension), clusters
    much larger than the retrieval depth per interest, short histories.
    """

    def __init__(
        self,
        num_users: int = 2000,
        num_items: int = 3000,
        num_clusters: int = 60,
        min_interests: int = 1,
        max_interests: int = 4,
        min_interactions: int = 20,
        max_interactions: int = 50,
        popularity_skew: float = 1.0,
        session_length: float = 1.0,
        cluster_topics: bool = True,
        seed: int = 0,
    ):
        checks = {
            "num_users >= 1": num_users >= 1,
            "num_clusters >= 1": num_clusters >= 1,
            "num_items >= num_clusters": num_items >= num_clusters,
            "1 <= min_interests <= max_interests <= num_clusters": 1 <= min_interests <= max_interests <= num_clusters,
            "1 <= min_interactions <= max_interactions": 1 <= min_interactions <= max_interactions,
            "popularity_skew >= 0": popularity_skew >= 0,
            "session_length >= 1": session_length >= 1,
        }
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"synthetic_interests: need {', '.join(failed)}")
        self.num_users, self.num_items, self.num_clusters = num_users, num_items, num_clusters
        self.min_interests, self.max_interests = min_interests, max_interests
        self.min_interactions, self.max_interactions = min_interactions, max_interactions
        self.popularity_skew, self.session_length = popularity_skew, session_length
        self.cluster_topics, self.seed = cluster_topics, seed
        self._generated: tuple[RawInteractions, pd.DataFrame, np.ndarray, _Planted] | None = None

    # ---- generation ----
    def _generate(self) -> tuple[RawInteractions, pd.DataFrame, np.ndarray, _Planted]:
        rng = np.random.default_rng(self.seed)
        n_users, n_items, n_clusters = self.num_users, self.num_items, self.num_clusters
        # 1. items: cluster of each item (random assignment, sizes differ by at most 1) and popularity
        item_cluster = rng.permutation(np.arange(n_items) % n_clusters)
        order = np.lexsort((rng.random(n_items), item_cluster))  # items grouped by cluster, random rank inside
        cluster_size = np.bincount(item_cluster, minlength=n_clusters)
        cluster_start = np.concatenate([[0], np.cumsum(cluster_size)[:-1]])
        rank = np.arange(n_items) - cluster_start[item_cluster[order]]  # rank inside the cluster, in `order`
        log_pop = -self.popularity_skew * np.log1p(rank)  # [N] in `order`

        # 2. users: interests (distinct clusters) and history sizes
        k_user = rng.integers(self.min_interests, self.max_interests + 1, n_users)
        interests = np.argsort(rng.random((n_users, n_clusters)), 1)[:, : self.max_interests]  # [U, M]
        n_user = rng.integers(self.min_interactions, self.max_interactions + 1, n_users)

        # 3. time order: sessions of geometric length, each from one of the user's interests
        user = np.repeat(np.arange(n_users), n_user)  # [T]
        first = np.concatenate([[0], np.cumsum(n_user)[:-1]])
        position = np.arange(len(user)) - first[user]
        starts = (position == 0) | (rng.random(len(user)) < 1.0 / self.session_length)
        session = np.cumsum(starts) - 1
        session_slot = np.floor(rng.random(int(starts.sum())) * k_user[user[starts]]).astype(np.int64)
        slot = session_slot[session]  # [T] which of the user's interests
        cluster = interests[user, slot]

        # 4. items without replacement per (user, slot), in proportion to popularity (Gumbel top-k)
        pair = user * self.max_interests + slot
        pair_order = np.argsort(pair, kind="stable")
        pair_sorted = pair[pair_order]
        occurrence = np.arange(len(pair)) - np.searchsorted(pair_sorted, pair_sorted)  # k-th draw of the pair
        draws = np.empty(len(pair), dtype=np.int64)
        draws[pair_order] = occurrence
        too_many = draws >= cluster_size[cluster]
        if too_many.any():
            raise ValueError(
                f"synthetic_interests: a user draws {int(draws.max()) + 1} items from one cluster of "
                f"{int(cluster_size.min())} items; raise num_items or lower max_interactions"
            )
        pairs, pair_index = np.unique(pair, return_inverse=True)
        pair_cluster = interests[pairs // self.max_interests, pairs % self.max_interests]
        width = int(cluster_size.max())
        inside = np.arange(width)[None, :]
        members = cluster_start[pair_cluster][:, None] + np.minimum(inside, cluster_size[pair_cluster][:, None] - 1)
        keys = log_pop[members] + rng.gumbel(size=members.shape)
        keys[inside >= cluster_size[pair_cluster][:, None]] = -np.inf  # past the end of a smaller cluster
        depth = int(draws.max()) + 1  # only the first `depth` successive draws of a pair are used
        if depth < width:
            top = np.argpartition(-keys, depth - 1, axis=1)[:, :depth]
            keys, members = np.take_along_axis(keys, top, 1), np.take_along_axis(members, top, 1)
        ranked = np.take_along_axis(members, np.argsort(-keys, 1), 1)  # [P, depth] successive draws
        item = order[ranked[pair_index, draws]]

        gaps = rng.exponential(3600.0, len(user)).astype(np.int64) + 1
        start_time = rng.integers(0, 30 * 86400, n_users)
        timestamp = start_time[user] + np.cumsum(gaps) - np.cumsum(gaps)[first][user]
        interactions = pd.DataFrame({"user_id": user, "item_id": item, "timestamp": timestamp})
        items = pd.DataFrame({"item_id": np.arange(n_items)})
        if self.cluster_topics:
            items["topics"] = [[f"c{c}"] for c in item_cluster]
        realised = pd.Series(item_cluster[item]).groupby(user).nunique()
        attributes = pd.DataFrame(
            {
                "user_id": np.arange(n_users),
                "num_interests": realised.reindex(np.arange(n_users)).to_numpy(),
                "planted_interests": k_user,
            }
        )
        raw = RawInteractions(interactions=interactions, items=items, name=f"synthetic_interests:{self.seed}")
        weight = np.empty(n_items)
        weight[order] = np.exp(log_pop)  # item id order
        planted_clusters = np.where(np.arange(self.max_interests)[None, :] < k_user[:, None], interests, -1)
        return raw, attributes, item_cluster, _Planted(weight, planted_clusters)

    def _data(self) -> tuple[RawInteractions, pd.DataFrame, np.ndarray, _Planted]:
        if self._generated is None:
            self._generated = self._generate()
        return self._generated

    # ---- InteractionSource ----
    def load(self) -> RawInteractions:
        raw = self._data()[0]
        return RawInteractions(interactions=raw.interactions.copy(), items=raw.items.copy(), users=None, name=raw.name)

    def user_attributes(self) -> pd.DataFrame:
        """``user_id``, ``num_interests`` (distinct clusters in the user's interactions) and
        ``planted_interests`` (interests the user was generated with; a short history may not show all)."""
        return self._data()[1].copy()

    def item_clusters(self) -> np.ndarray:
        """``[num_items]`` planted cluster of each item id (ids are ``0 .. num_items - 1``)."""
        return self._data()[2].copy()

    def next_item_probabilities(self, users: np.ndarray, seen_row: np.ndarray, seen_item: np.ndarray) -> np.ndarray:
        """``[E, num_items]`` probability of each item being user ``users[e]``'s next interaction, given the items
        they have seen (``seen_item[j]`` seen by ``users[seen_row[j]]``): the Bayes oracle of the generator, exact
        for ``session_length`` 1 (each interaction picks one of the user's ``k_u`` planted interests uniformly, then
        the next popularity-weighted draw among that cluster's items the user has not seen). Dense: for benchmark
        sizes. Seen items get 0."""
        _, _, item_cluster, planted = self._data()
        weight, clusters = planted.item_weight, planted.user_clusters[np.asarray(users)]  # [N], [E, M]
        share = np.zeros((len(users), self.num_clusters))  # [E, C] chance the next interaction is from cluster c
        rows = np.repeat(np.arange(len(users)), clusters.shape[1])
        valid = clusters.ravel() >= 0
        share[rows[valid], clusters.ravel()[valid]] = 1.0
        share /= share.sum(1, keepdims=True)
        remaining = np.tile(np.bincount(item_cluster, weights=weight, minlength=self.num_clusters), (len(users), 1))
        np.subtract.at(remaining, (seen_row, item_cluster[seen_item]), weight[seen_item])  # [E, C] unseen mass
        per_mass = np.divide(share, remaining, out=np.zeros_like(share), where=remaining > 1e-12)
        probability = per_mass[:, item_cluster] * weight[None, :]  # [E, N]
        probability[seen_row, seen_item] = 0.0
        return probability

    def describe(self) -> str:
        return (
            f"synthetic_interests(seed={self.seed}, users={self.num_users}, items={self.num_items}, "
            f"clusters={self.num_clusters}, interests={self.min_interests}-{self.max_interests}, "
            f"interactions={self.min_interactions}-{self.max_interactions}, skew={self.popularity_skew}, "
            f"session_length={self.session_length})"
        )
