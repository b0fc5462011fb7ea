"""ID embedding tables held in a torchrec ``EmbeddingBagCollection`` (sharded by ``strategy: torchrec``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_retrieval.data.features import batch_key
from lightning_retrieval.validation import positive_int


class IdEmbeddings(nn.Module):
    """Pooled embeddings of ID features.

    Tables: ``user_id`` (feature ``user``), ``item_id`` (features ``item``, ``neg_item`` and, when
    ``share_item_table``, ``history``), optionally ``history_item_id`` (feature ``history``) and ``topic``
    (features ``item_topics``, ``neg_item_topics``), and one table per side feature: ``user_feature_<name>``
    (feature ``user_feature_<name>``) and ``item_feature_<name>`` (features ``item_feature_<name>``,
    ``neg_item_feature_<name>``). Bags are mean-pooled; an empty bag pools to zeros.

    Args:
        dropout: dropout on every pooled ID embedding (the Pinterest recipe regularises ID embeddings).
        user_side_features / item_side_features: ``{name: rows}`` of the categorical / multi-valued side-feature
            tables (``lightning_retrieval.data.features``; row 0 is the unknown / missing value).
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        num_topics: int,
        embedding_dim: int,
        share_item_table: bool = True,
        dropout: float = 0.0,
        user_side_features: dict[str, int] | None = None,
        item_side_features: dict[str, int] | None = None,
    ):
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType  # imported when used: CLI start-up

        super().__init__()
        positive_int("embedding_dim", embedding_dim)  # before torch builds tables from it
        item_features = ["item", "neg_item"] + (["history"] if share_item_table else [])
        tables = [
            EmbeddingBagConfig(
                name="user_id",
                embedding_dim=embedding_dim,
                num_embeddings=num_users,
                feature_names=["user"],
                pooling=PoolingType.MEAN,
            ),
            EmbeddingBagConfig(
                name="item_id",
                embedding_dim=embedding_dim,
                num_embeddings=num_items,
                feature_names=item_features,
                pooling=PoolingType.MEAN,
            ),
        ]
        if not share_item_table:
            tables.append(
                EmbeddingBagConfig(
                    name="history_item_id",
                    embedding_dim=embedding_dim,
                    num_embeddings=num_items,
                    feature_names=["history"],
                    pooling=PoolingType.MEAN,
                )
            )
        if num_topics > 0:
            tables.append(
                EmbeddingBagConfig(
                    name="topic",
                    embedding_dim=embedding_dim,
                    num_embeddings=num_topics,
                    feature_names=["item_topics", "neg_item_topics"],
                    pooling=PoolingType.MEAN,
                )
            )
        self.bounds = {
            "user": num_users,
            "item": num_items,
            "neg_item": num_items,
            "history": num_items,
            "item_topics": num_topics,
            "neg_item_topics": num_topics,
        }
        side = (("user", ("user",), user_side_features), ("item", ("item", "neg_item"), item_side_features))
        for owner, prefixes, sizes in side:
            for name, rows in (sizes or {}).items():
                keys = [batch_key(prefix, name) for prefix in prefixes]
                tables.append(
                    EmbeddingBagConfig(
                        name=batch_key(owner, name),
                        embedding_dim=embedding_dim,
                        num_embeddings=positive_int(f"{owner} side feature {name!r} rows", rows),
                        feature_names=keys,
                        pooling=PoolingType.MEAN,
                    )
                )
                self.bounds.update(dict.fromkeys(keys, rows))
        self.collection = EmbeddingBagCollection(tables=tables, device=torch.device("cpu"))
        for table in self.collection.embedding_bags.values():
            nn.init.normal_(table.weight, std=embedding_dim**-0.5)
        self.feature_names = [f for t in tables for f in t.feature_names]
        self.table_of = {f: t.name for t in tables for f in t.feature_names}
        self.dropout = nn.Dropout(dropout)
        self.embedding_dim = embedding_dim

    def forward(self, bags: dict[str, tuple[torch.Tensor, torch.Tensor]], batch_size: int) -> dict[str, torch.Tensor]:
        """``{feature: (values [nnz], lengths [B])}`` -> ``{feature: [B, D]}`` for the features given.

        Only the features given are looked up; an unknown feature or ids outside a table raise an error naming
        the feature.
        """
        if not bags:
            raise ValueError(f"no features given; known features: {self.feature_names}")
        unknown = [name for name in bags if name not in self.table_of]
        if unknown:
            raise KeyError(f"unknown features {unknown}; known features: {self.feature_names}")
        tables = self._plain_tables()
        pooled = self._pool_collection(bags, batch_size) if tables is None else self._pool(tables, bags, batch_size)
        return {name: self.dropout(pooled[name]) for name in bags}

    def _pool(
        self, tables: nn.ModuleDict, bags: dict[str, tuple[torch.Tensor, torch.Tensor]], batch_size: int
    ) -> dict[str, torch.Tensor]:
        """Unsharded tables: one mean ``embedding_bag`` per table over the given features' bags, stacked.

        What the collection computes, without its per-feature lookups: it pools every feature of every table,
        absent ones as empty bags, and each lookup's backward writes a dense ``[rows, D]`` gradient (6 of the
        item table per two-tower step)."""
        by_table: dict[str, list[str]] = {}
        for name in bags:
            by_table.setdefault(self.table_of[name], []).append(name)
        pooled = {}
        for table, names in by_table.items():
            values, lengths = zip(*(self._checked_bag(name, bags[name], batch_size) for name in names))
            lengths = torch.cat(lengths)
            offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
            weight = tables[table].weight
            out = F.embedding_bag(torch.cat(values), weight, offsets, mode="mean", include_last_offset=True)
            pooled.update(zip(names, out.split(batch_size)))
        return pooled

    def _pool_collection(
        self, bags: dict[str, tuple[torch.Tensor, torch.Tensor]], batch_size: int
    ) -> dict[str, torch.Tensor]:
        """Sharded tables: the torchrec collection's lookup, which takes every feature (absent ones empty)."""
        device = next(iter(bags.values()))[0].device  # the tables are sharded: no weight to ask
        values, lengths = [], []
        for name in self.feature_names:
            if name in bags:
                v, n = self._checked_bag(name, bags[name], batch_size)
                values.append(v)
                lengths.append(n)
            else:
                lengths.append(torch.zeros(batch_size, dtype=torch.long, device=device))
        from torchrec import KeyedJaggedTensor

        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=self.feature_names,
            values=torch.cat(values) if values else torch.zeros(0, dtype=torch.long, device=device),
            lengths=torch.cat(lengths),
        )
        return self.collection(kjt).to_dict()

    def sequence(self, feature: str, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-position embeddings ``[B, L, D]`` of ``ids [B, L]`` from ``feature``'s table, zeros where ``mask``
        is False, with the same dropout as pooled embeddings.

        A plain table is indexed directly (a position needs no pooling). Going through the collection would pool
        ``B * L`` one-item bags and emit ``[B * L, D]`` for every other feature too: 16x slower at B=512, L=50.
        A sharded table is looked up that way, as torchrec's sharded lookup needs every feature.
        """
        bags = self._plain_tables()
        if bags is None:
            b, length = ids.shape
            pooled = self({feature: (ids[mask], mask.flatten().long())}, batch_size=b * length)[feature]
            return pooled.view(b, length, -1)
        self._check_ids(feature, ids[mask])
        weight = bags[self.table_of[feature]].weight
        # = F.embedding(ids) * mask, values and gradients: index_select's backward (index_add) is 2x faster than
        # the embedding's. Padding reads row 0 and is zeroed (its gradient is then 0); no copy of the table, whose
        # size would make each call cost O(items) (an appended zero row cost 1.7x the lookup at 500k items). The
        # zeroing multiplies by the 0/1 mask: a broadcast masked_fill and its backward cost 3.5x as much on CPU
        rows = weight.index_select(0, ids.masked_fill(~mask, 0).flatten()).view(*ids.shape, -1)
        return self.dropout(rows * mask[..., None].to(rows.dtype))

    def sequence_rows(
        self, feature: str, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(rows [U, D], index [B, L])``: the rows of the distinct valid ``ids`` and each position's row (0 at
        padding), so that ``sequence(feature, ids, mask)`` equals ``rows[index] * mask``. None where it would not:
        a sharded table, dropout in training (each position draws its own), or no valid position."""
        tables = self._plain_tables()
        if tables is None or (self.training and self.dropout.p > 0) or not bool(mask.any()):
            return None
        valid = ids[mask]
        self._check_ids(feature, valid)
        distinct, inverse = torch.unique(valid, return_inverse=True)
        index = torch.zeros_like(ids).masked_scatter_(mask, inverse)
        return tables[self.table_of[feature]].weight.index_select(0, distinct), index

    def _plain_tables(self) -> nn.ModuleDict | None:
        """The tables by name while the collection is a plain ``EmbeddingBagCollection``; None once sharded (a
        ``ShardedEmbeddingBagCollection`` also has an ``embedding_bags`` dict, but its tables train only through
        its own lookup and fused optimizer)."""
        from torchrec import EmbeddingBagCollection

        return self.collection.embedding_bags if isinstance(self.collection, EmbeddingBagCollection) else None

    def _checked_bag(
        self, name: str, bag: tuple[torch.Tensor, torch.Tensor], batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values, lengths)`` of feature ``name`` as int64, after checking ids and the number of bags."""
        values, lengths = bag
        self._check_ids(name, values)
        if lengths.numel() != batch_size:
            raise ValueError(f"feature {name!r}: {lengths.numel()} bags for a batch of {batch_size}")
        return values.long(), lengths.long()

    def _check_ids(self, name: str, ids: torch.Tensor) -> None:
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.bounds[name]):
            raise IndexError(
                f"feature {name!r}: ids must be in [0, {self.bounds[name]}), got range [{int(ids.min())}, "
                f"{int(ids.max())}]"
            )

    def table(self, name: str) -> torch.Tensor:
        """The weight ``[rows, D]`` of an unsharded table (sharded ones: ``strategy.lightning_module_state_dict``)."""
        bags = self._plain_tables()
        if bags is None:
            raise RuntimeError(f"table {name!r} is sharded; read it from the strategy's gathered state dict")
        return bags[name].weight

    @staticmethod
    def state_key(name: str) -> str:
        """Key of table ``name`` in the state dict of this module."""
        return f"collection.embedding_bags.{name}.weight"
