"""Index backends (registry kind ``index``), all inner-product: the models score by dot product.

FAISS backends (``exact``, ``hnsw``, ``ivfpq``): on a host where ``faiss.get_num_gpus() > 0`` (faiss-gpu
installed) the indexes FAISS can run on GPU move there automatically; HNSW has no GPU implementation in
FAISS and stays on CPU (``describe`` says so). ``exact_torch`` is exhaustive search as a batched torch
matmul + top-k, on CUDA when torch sees a GPU; it also masks each query's excluded (seen) items in the score
matrix before the top-k (``supports_exclusion``), so evaluation fetches exactly ``k`` results instead of
over-fetching ``k + max(seen)``. ``faiss_factory`` builds any FAISS index from a factory string.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from numbers import Real
from typing import TYPE_CHECKING

import faiss
import numpy as np
import torch

from lightning_retrieval.errors import ConfigError
from lightning_retrieval.registry import component_kind, register
from lightning_retrieval.retrieval.topk import chunked_topk
from lightning_retrieval.validation import positive_int

if TYPE_CHECKING:
    from lightning_retrieval.data.preparation import CSR


class RetrievalIndexError(RuntimeError):
    """The index could not be built or could not answer a query in full. Never an empty result."""


def gpu_count() -> int:
    try:
        return int(faiss.get_num_gpus())
    except AttributeError:  # faiss-cpu builds without the symbol
        return 0


@component_kind("index")
class IndexBackend(ABC):
    """Build an inner-product index over item vectors and search it.

    Args:
        use_gpu: ``None`` (default) moves the index to GPU when one is visible (to FAISS for FAISS
            backends, to torch for ``exact_torch``); ``False`` forces CPU; ``True`` requires a GPU.
    """

    exact: bool = False
    supports_gpu: bool = True
    supports_exclusion: bool = False  # search(..., exclude=CSR) masks excluded items before the top-k

    def __init__(self, use_gpu: bool | None = None):
        self.use_gpu = use_gpu
        self.index = None
        self.on_gpu = False
        self.build_seconds = 0.0
        self.dim = 0

    def check_corpus(self, num_vectors: int) -> None:
        """Raise :class:`ConfigError` (before training) if this index cannot be built over ``num_vectors``."""

    @abstractmethod
    def _build(self, vectors: np.ndarray) -> None:
        """Index the validated ``[N, D]`` float32 vectors; set ``self.index`` and ``self.on_gpu``."""

    @abstractmethod
    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw ``(scores, ids)`` for validated queries; ids -1 where the index found nothing."""

    def build(self, vectors: np.ndarray) -> IndexBackend:
        """Index ``vectors`` ``[N, D]``; row i gets id i."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] == 0:
            raise RetrievalIndexError(f"cannot index an empty or non-2-D array of shape {vectors.shape}")
        if not np.isfinite(vectors).all():
            bad = int((~np.isfinite(vectors).all(1)).sum())
            raise RetrievalIndexError(f"{bad} item vector(s) contain NaN/inf; refusing to build the index")
        start = time.perf_counter()
        self.dim, self._size = vectors.shape[1], vectors.shape[0]
        self._build(vectors)
        self.build_seconds = time.perf_counter() - start
        return self

    @property
    def size(self) -> int:
        return 0 if self.index is None else self._size

    def _search_excluding(self, queries: np.ndarray, k: int, exclude: CSR) -> tuple[np.ndarray, np.ndarray]:
        """Raw ``(scores, ids)`` with row ``q``'s items ``exclude.row(q)`` never returned (``supports_exclusion``)."""
        raise RetrievalIndexError(f"{type(self).__name__} does not support excluded items in search")

    def search(self, queries: np.ndarray, k: int, exclude: CSR | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores [Q, k], ids [Q, k])`` by inner product, best first.

        ``exclude`` (only where ``supports_exclusion``): a CSR with one row per query of item ids that query
        must not get back (its seen items); every query must keep at least ``k`` items.

        Raises :class:`RetrievalIndexError` if the index is missing, ``k`` exceeds the corpus, or any query
        gets fewer than ``k`` results (FAISS pads with id -1; we never pass such padding on).
        """
        if self.index is None:
            raise RetrievalIndexError("search before build: call build(item_vectors) first")
        if k < 1 or k > self.size:
            raise RetrievalIndexError(f"k={k} must be in [1, corpus size {self.size}]")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise RetrievalIndexError(f"queries must be [Q, {self.dim}], got {list(queries.shape)}")
        if exclude is not None:
            if not self.supports_exclusion:
                raise RetrievalIndexError(
                    f"{type(self).__name__} cannot exclude items in search (supports_exclusion is False); "
                    "over-fetch and drop them instead"
                )
            if exclude.num_rows != len(queries):
                raise RetrievalIndexError(f"exclude has {exclude.num_rows} rows for {len(queries)} queries")
            if exclude.values.size and (exclude.values.min() < 0 or exclude.values.max() >= self.size):
                raise RetrievalIndexError(f"excluded item ids must be in [0, {self.size})")
            room = self.size - exclude.lengths
            if (room < k).any():
                raise RetrievalIndexError(
                    f"k={k} exceeds the items left after exclusion for {int((room < k).sum())} query(ies) "
                    f"(corpus {self.size}, at most {int(exclude.lengths.max())} excluded)"
                )
        try:
            scores, ids = self._search(queries, k) if exclude is None else self._search_excluding(queries, k, exclude)
        except RuntimeError as err:
            raise RetrievalIndexError(f"{type(self).__name__} search failed: {err}") from err
        missing = ids < 0
        if missing.any():
            rows = np.flatnonzero(missing.any(1))
            raise RetrievalIndexError(
                f"{type(self).__name__} returned fewer than k={k} results for {len(rows)} of {len(queries)} "
                f"queries (first: {rows[:3].tolist()}); increase the search breadth (nprobe / ef_search)"
            )
        return scores, ids

    def search_allowed(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Pre-filtered search: top-``k`` among the item ids in ``allowed`` (sorted int64) for every query.

        Returns ``(scores, ids, scanned)``; ids are -1 past the end when ``allowed`` has fewer than k items.
        ``scanned`` is the number of candidates scored per query.
        """
        raise RetrievalIndexError(f"{type(self).__name__} does not support pre-filtered search")

    def describe(self) -> dict:
        return {
            "index": getattr(type(self), "registry_name", type(self).__name__),
            "exact": self.exact,
            "device": "gpu" if self.on_gpu else "cpu",
            "metric": "inner_product",
            "corpus_size": self.size,
            "build_seconds": round(self.build_seconds, 4),
        }


class FaissIndex(IndexBackend):
    """A FAISS index built by :meth:`_create`, moved to GPU when FAISS sees one (and the type supports it)."""

    @abstractmethod
    def _create(self, dim: int, num_vectors: int) -> faiss.Index:
        """A fresh CPU index for ``num_vectors`` vectors of width ``dim``."""

    def _configure_search(self, k: int) -> None:
        """Set search-time parameters (e.g. efSearch) before a search for ``k`` results."""

    def _training_sample(self, vectors: np.ndarray) -> np.ndarray:
        """The vectors an untrained index is trained on (all of them unless a backend samples)."""
        return vectors

    def _add(self, index: faiss.Index, vectors: np.ndarray) -> None:
        """Add the corpus ``vectors [N, D]`` to the trained ``index`` (row ``i`` answers as id ``i``)."""
        index.add(vectors)

    def _build(self, vectors: np.ndarray) -> None:
        index = self._create(self.dim, vectors.shape[0])
        want_gpu = self.use_gpu if self.use_gpu is not None else gpu_count() > 0
        if want_gpu and gpu_count() == 0:
            raise RetrievalIndexError("use_gpu=True but FAISS sees no GPU (is faiss-gpu installed?)")
        self.on_gpu = False
        try:
            if want_gpu and self.supports_gpu:
                index = faiss.index_cpu_to_all_gpus(index)
                self.on_gpu = True
            if not index.is_trained:
                index.train(self._training_sample(vectors))
            self._add(index, vectors)
        except RuntimeError as err:
            raise RetrievalIndexError(f"{type(self).__name__} failed to build over {vectors.shape}: {err}") from err
        self.index = index

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self._configure_search(k)
        return self.index.search(queries, k)

    def _search_parameters(self, selector, k: int):
        return faiss.SearchParameters(sel=selector)

    def search_allowed(self, queries, k, allowed):
        if self.on_gpu:
            raise RetrievalIndexError("pre-filtered search (IDSelector) runs on CPU indexes only; use_gpu: false")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores, ids = self._search_among(queries, k, np.ascontiguousarray(allowed, dtype=np.int64))
        return scores, ids, len(allowed) if self.exact else min(len(allowed), self.size)

    def _search_among(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw ``(scores, ids)`` of the top-``k`` among the corpus ids ``allowed``."""
        selector = faiss.IDSelectorBatch(allowed)
        return self.index.search(queries, k, params=self._search_parameters(selector, k))


@register("exact_torch")
class TorchExactIndex(IndexBackend):
    """Exhaustive inner-product search as batched ``torch.topk(queries @ items.T)``; CUDA when available.

    With ``exclude`` the excluded (query, item) scores are set to ``-inf`` by one vectorised scatter per query
    batch before the top-k, so exactly ``k`` results are fetched whatever a user has seen. On CPU the top-k is
    :func:`~lightning_retrieval.retrieval.topk.chunked_topk` (exact; ~1.4x ``torch.topk``'s speed on wide rows).

    Args:
        query_batch: queries per matmul; ``None`` (default) picks as many as keep one score block
            ``query_batch x N`` under ``block_scores`` floats.
        block_scores: score-block budget for the automatic ``query_batch`` (default 2**25 floats = 128 MiB).
    """

    exact = True
    supports_exclusion = True

    def __init__(self, query_batch: int | None = None, block_scores: int = 2**25, use_gpu: bool | None = None):
        super().__init__(use_gpu)
        if query_batch is not None and query_batch < 1:
            raise ValueError(f"query_batch must be a positive number of queries or None, got {query_batch}")
        if block_scores < 1:
            raise ValueError(f"block_scores must be positive, got {block_scores}")
        self.query_batch, self.block_scores = query_batch, block_scores

    def _build(self, vectors: np.ndarray) -> None:
        want_gpu = self.use_gpu if self.use_gpu is not None else torch.cuda.is_available()
        if want_gpu and not torch.cuda.is_available():
            raise RetrievalIndexError("use_gpu=True but torch sees no CUDA device")
        self.device = torch.device("cuda" if want_gpu else "cpu")
        self.on_gpu = want_gpu
        self.index = torch.from_numpy(vectors).to(self.device)
        self._items_t = self.index.T  # [D, N] view, for the score matmul

    def _batch(self) -> int:
        return self.query_batch or max(1, self.block_scores // max(self.size, 1))

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._topk(queries, k, None)

    def _search_excluding(self, queries: np.ndarray, k: int, exclude: CSR) -> tuple[np.ndarray, np.ndarray]:
        return self._topk(queries, k, exclude)

    def _topk(self, queries: np.ndarray, k: int, exclude: CSR | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of ``queries [Q, D] @ items.T`` per query batch, written straight into the outputs."""
        n_q, batch = len(queries), self._batch()
        scores, ids = np.empty((n_q, k), dtype=np.float32), np.empty((n_q, k), dtype=np.int64)
        out_scores, out_ids = torch.from_numpy(scores), torch.from_numpy(ids)
        q = torch.from_numpy(queries)
        if exclude is not None:  # (query, item) pairs to mask, as flat offsets into a batch's score block
            rows = np.repeat(np.arange(n_q, dtype=np.int64), exclude.lengths)
            flat = torch.from_numpy(rows * self.size + exclude.values.astype(np.int64, copy=False))
        with torch.no_grad():
            for s in range(0, n_q, batch):
                e = min(s + batch, n_q)
                block = q[s:e].to(self.device) @ self._items_t  # [b, N]
                if exclude is not None and exclude.offsets[e] > exclude.offsets[s]:
                    masked = flat[exclude.offsets[s] : exclude.offsets[e]] - s * self.size
                    block.view(-1).index_fill_(0, masked.to(self.device), float("-inf"))
                if self.on_gpu:
                    top = torch.topk(block, k, dim=1)
                    out_scores[s:e], out_ids[s:e] = top.values.cpu(), top.indices.cpu()
                else:
                    chunked_topk(block, k, out=(out_scores[s:e], out_ids[s:e]))
        return scores, ids

    def search_allowed(self, queries, k, allowed):
        subset = self.index[torch.as_tensor(allowed, device=self.device)]
        take = min(k, len(allowed))
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        with torch.no_grad():
            top = torch.topk(torch.from_numpy(queries).to(self.device) @ subset.T, take, dim=1)
        scores[:, :take] = top.values.cpu().numpy()
        ids[:, :take] = np.asarray(allowed)[top.indices.cpu().numpy()]
        return scores, ids, len(allowed)


@register("exact")
class ExactIndex(FaissIndex):
    """Exhaustive inner-product search (``IndexFlatIP``): the reference; the default on a faiss-gpu host."""

    exact = True

    def _create(self, dim: int, num_vectors: int):
        return faiss.IndexFlatIP(dim)


def default_exact_index() -> IndexBackend:
    """The exact index the callbacks use when none is configured.

    ``exact_torch`` on a CPU-only host (``benchmarks/results/eval_throughput.md``: faster than FAISS
    ``IndexFlatIP`` at 610 x 9,742, 5,000 x 20,000 and 2,000 x 1M, and it masks seen items before the top-k);
    FAISS ``exact`` where ``faiss.get_num_gpus() > 0``, so a faiss-gpu host searches on its GPU index.
    """
    return ExactIndex() if gpu_count() > 0 else TorchExactIndex()


def hnsw_breadth(ef_search: int, depth: int) -> int:
    """The efSearch an HNSW graph is searched with for ``depth`` results: FAISS's rule ``max(efSearch, depth)``."""
    return max(ef_search, depth)


def hnsw_graph(index: faiss.Index) -> faiss.IndexHNSW | None:
    """The HNSW graph that searches ``index``'s vectors: ``index`` itself or the base of a refine (``...,RFlat``),
    pre-transform (``PCA32,HNSW32,Flat``) or id-map wrapper; ``None`` if there is none (an IVF's HNSW coarse
    quantizer does not count: it searches centroids, tuned by ``quantizer_efSearch``)."""
    index = faiss.downcast_index(index)
    while not isinstance(index, faiss.IndexHNSW):
        inner = index.base_index if isinstance(index, faiss.IndexRefine) else getattr(index, "index", None)
        if not isinstance(inner, faiss.Index):
            return None
        index = faiss.downcast_index(inner)
    return index


def refine_index(index: faiss.Index) -> faiss.IndexRefine | None:
    """The refine stage (``...,RFlat``) of ``index``: itself or inside an id map; ``None`` without one."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap):
        index = faiss.downcast_index(index.index)
    return index if isinstance(index, faiss.IndexRefine) else None


@register("hnsw")
class HNSWIndex(FaissIndex):
    """Graph ANN (``IndexHNSWFlat``, inner product). CPU only in FAISS.

    Args:
        m: neighbours per node; ef_construction / ef_search: breadth of build and search (search uses
            ``max(ef_search, k)``).
    """

    supports_gpu = False

    def __init__(self, m: int = 32, ef_construction: int = 200, ef_search: int = 128, use_gpu: bool | None = None):
        super().__init__(use_gpu)
        self.m = positive_int("hnsw.m", m)
        self.ef_construction = positive_int("hnsw.ef_construction", ef_construction)
        self.ef_search = positive_int("hnsw.ef_search", ef_search)

    def _create(self, dim: int, num_vectors: int):
        index = faiss.IndexHNSWFlat(dim, self.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        return index

    def _configure_search(self, k: int) -> None:
        self.index.hnsw.efSearch = hnsw_breadth(self.ef_search, k)

    def _search_parameters(self, selector, k: int):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=hnsw_breadth(self.ef_search, k))


@register("ivfpq")
class IVFPQIndex(FaissIndex):
    """Inverted lists with product quantisation (``IndexIVFPQ``, inner product); GPU when available.

    Args:
        nlist: number of coarse clusters (needs at least that many vectors to train).
        pq_m: sub-quantisers (must divide the dimension); nbits: bits per code.
        nprobe: clusters visited per query.
    """

    def __init__(self, nlist: int = 256, pq_m: int = 8, nbits: int = 8, nprobe: int = 16, use_gpu: bool | None = None):
        super().__init__(use_gpu)
        self.nlist, self.pq_m = positive_int("ivfpq.nlist", nlist), positive_int("ivfpq.pq_m", pq_m)
        self.nbits, self.nprobe = positive_int("ivfpq.nbits", nbits), positive_int("ivfpq.nprobe", nprobe)
        if self.nbits > 16:
            raise ConfigError(f"ivfpq.nbits must be in [1, 16] (bits per PQ code), got {nbits}")
        if self.nprobe > self.nlist:
            raise ConfigError(f"ivfpq.nprobe={nprobe} must be <= nlist={nlist} (clusters visited per query)")

    def check_corpus(self, num_vectors: int) -> None:
        needed = max(self.nlist, 2**self.nbits)
        if num_vectors < needed:
            raise ConfigError(
                f"ivfpq: training needs at least {needed} vectors (nlist={self.nlist}, 2**nbits={2**self.nbits}), "
                f"the corpus has {num_vectors}; lower nlist/nbits or use 'exact'/'hnsw'"
            )

    def _create(self, dim: int, num_vectors: int):
        if dim % self.pq_m:
            raise RetrievalIndexError(f"ivfpq: pq_m={self.pq_m} must divide the embedding width {dim}")
        needed = max(self.nlist, 2**self.nbits)
        if num_vectors < needed:
            raise RetrievalIndexError(
                f"ivfpq: training needs at least {needed} vectors (nlist={self.nlist}, 2**nbits={2**self.nbits}), "
                f"the corpus has {num_vectors}; lower nlist/nbits or use 'exact'/'hnsw'"
            )
        quantizer = faiss.IndexFlatIP(dim)
        self._quantizer = quantizer  # keep alive: the IVF index does not own it
        return faiss.IndexIVFPQ(quantizer, dim, self.nlist, self.pq_m, self.nbits, faiss.METRIC_INNER_PRODUCT)

    def _search_parameters(self, selector, k: int):
        return faiss.SearchParametersIVF(sel=selector, nprobe=self.nprobe)

    def _configure_search(self, k: int) -> None:
        if self.on_gpu:
            faiss.GpuParameterSpace().set_index_parameter(self.index, "nprobe", self.nprobe)
        else:
            self.index.nprobe = self.nprobe


_FACTORY_EXAMPLES = "'Flat', 'HNSW32,Flat', 'IVF1024,Flat', 'IVF4096,PQ16', 'OPQ16,IVF4096,PQ16x4fs'"


@register("faiss_factory")
class FaissFactoryIndex(FaissIndex):
    """Any FAISS index described by an index-factory string, with inner-product metric.

    Args:
        factory: FAISS factory string, e.g. ``IVF4096,PQ16``, ``OPQ16,IVF4096,PQ16x4fs``, ``HNSW32,Flat``,
            ``HNSW16,SQ8`` (graph over 8-bit vectors), ``HNSW16,SQ8,RFlat`` (plus an exact re-rank).
        search_params: FAISS ``ParameterSpace`` string applied after building, e.g. ``nprobe=64``,
            ``efSearch=128``, ``nprobe=32,quantizer_efSearch=64``; empty for FAISS's defaults.
        train_size: train on a seeded random sample of this many vectors (``None``: all); IVF/PQ training
            cost grows with it, and FAISS needs about 39 x nlist vectors for good centroids.
        seed: seed of the training sample.
        ef_construction: efConstruction of the factory's HNSW graph, set before the vectors are added
            (``None``: FAISS's default 40). Needs a graph over the vectors (``HNSW...``; not an IVF's quantizer).
        ef_search: efSearch of that graph, searched with ``max(ef_search, k * k_factor)`` like ``hnsw``
            (``None``: FAISS's default or ``search_params``).
        k_factor: refine factories (``...,RFlat``): the graph returns ``k * k_factor`` candidates, re-scored
            exactly with the stored full vectors (``None``: FAISS's 1, a re-ordering only).
        locality_clusters: add the vectors grouped by their nearest of this many k-means centroids (trained on
            the training sample) instead of in corpus order, so the vectors and links a graph search visits lie
            close in memory (fewer cache misses); the index is wrapped in FAISS's ``IDMap`` and still answers
            with corpus row ids. ``None``: corpus order.
    """

    def __init__(
        self,
        factory: str = "IVF1024,Flat",
        search_params: str = "",
        train_size: int | None = 262_144,
        seed: int = 0,
        ef_construction: int | None = None,
        ef_search: int | None = None,
        k_factor: float | None = None,
        locality_clusters: int | None = None,
        use_gpu: bool | None = None,
    ):
        super().__init__(use_gpu)
        if not isinstance(factory, str) or not factory.strip():
            raise ValueError(
                f"faiss_factory: factory must be a non-empty FAISS factory string, e.g. {_FACTORY_EXAMPLES}"
            )
        if train_size is not None and train_size < 1:
            raise ValueError(f"faiss_factory: train_size must be a positive vector count or None, got {train_size}")
        self.factory, self.search_params = factory.strip(), search_params.strip()
        self.train_size, self.seed = train_size, seed
        self.exact = self.factory == "Flat"
        self.supports_gpu = "HNSW" not in self.factory  # FAISS has no GPU HNSW
        optional = {"ef_construction": ef_construction, "ef_search": ef_search, "locality_clusters": locality_clusters}
        for name, value in optional.items():
            setattr(self, name, None if value is None else positive_int(f"faiss_factory.{name}", value))
        if k_factor is not None and (isinstance(k_factor, bool) or not isinstance(k_factor, Real) or k_factor < 1):
            raise ConfigError(f"faiss_factory.k_factor must be a number >= 1 (candidates per result), got {k_factor!r}")
        self.k_factor = k_factor
        if (ef_construction is not None or ef_search is not None) and "HNSW" not in self.factory:
            raise ConfigError(
                f"faiss_factory: ef_construction / ef_search need an HNSW graph in the factory (e.g. 'HNSW32,Flat', "
                f"'HNSW16,SQ8', 'HNSW16,SQ8,RFlat'), {self.factory!r} has none"
            )
        if locality_clusters is not None and "IDMap" in self.factory:
            raise ConfigError(
                f"faiss_factory: locality_clusters wraps the index in an IDMap itself; drop it from {self.factory!r}"
            )
        named = {part.split("=")[0].strip() for part in self.search_params.split(",")}
        for option, param in (("ef_search", "efSearch"), ("k_factor", "k_factor_rf")):
            if getattr(self, option) is not None and param in named:
                raise ConfigError(f"faiss_factory: give either {option} or {param} in search_params, not both")

    def _create(self, dim: int, num_vectors: int):
        try:
            wrap = "IDMap," if self.locality_clusters is not None else ""
            index = faiss.index_factory(dim, wrap + self.factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise RetrievalIndexError(
                f"faiss_factory: FAISS cannot build {self.factory!r} for {dim}-d vectors ({reason}); valid strings "
                f"look like {_FACTORY_EXAMPLES} (PQ sub-quantisers must divide the width)"
            ) from err
        graph = hnsw_graph(index)
        if graph is None and (self.ef_construction is not None or self.ef_search is not None):
            raise ConfigError(
                f"faiss_factory: ef_construction / ef_search need an HNSW graph over the vectors, {self.factory!r} "
                "has none (an IVF's HNSW quantizer is tuned with search_params quantizer_efSearch)"
            )
        if self.k_factor is not None and refine_index(index) is None:
            raise ConfigError(
                f"faiss_factory: k_factor needs a refine factory (e.g. 'HNSW16,SQ8,RFlat'), {self.factory!r} is none"
            )
        if self.ef_construction is not None:
            graph.hnsw.efConstruction = self.ef_construction
        return index

    def _training_sample(self, vectors: np.ndarray) -> np.ndarray:
        if self.train_size is None or len(vectors) <= self.train_size:
            return vectors
        rows = np.sort(np.random.default_rng(self.seed).choice(len(vectors), self.train_size, replace=False))
        return vectors[rows]

    def check_corpus(self, num_vectors: int) -> None:
        if self.locality_clusters is None:
            return
        if num_vectors < self.locality_clusters:
            raise ConfigError(
                f"faiss_factory: locality_clusters={self.locality_clusters} needs at least that many vectors, the "
                f"corpus has {num_vectors}; lower locality_clusters or leave it out"
            )
        sample = num_vectors if self.train_size is None else min(self.train_size, num_vectors)
        if sample < self.locality_clusters:
            raise ConfigError(
                f"faiss_factory: locality_clusters={self.locality_clusters} are trained on train_size={sample} "
                "vectors: raise train_size or lower locality_clusters"
            )

    def _add(self, index: faiss.Index, vectors: np.ndarray) -> None:
        if self.locality_clusters is None:
            return index.add(vectors)
        self.check_corpus(len(vectors))
        kmeans = faiss.Kmeans(vectors.shape[1], self.locality_clusters, niter=10, seed=self.seed)
        kmeans.train(self._training_sample(vectors))
        nearest = kmeans.index.search(vectors, 1)[1][:, 0]
        order = np.argsort(nearest, kind="stable")  # [N] corpus rows, grouped by centroid
        index.add_with_ids(vectors[order], order.astype(np.int64))

    def _build(self, vectors: np.ndarray) -> None:
        super()._build(vectors)
        self._configure_search(0)  # a bad parameter string fails at build time, not at the first search

    def _apply_search_params(self) -> None:
        space = faiss.GpuParameterSpace() if self.on_gpu else faiss.ParameterSpace()
        try:
            space.set_index_parameters(self.index, self.search_params)
        except RuntimeError as err:
            raise RetrievalIndexError(
                f"faiss_factory: cannot apply search_params {self.search_params!r} to {self.factory!r} "
                f"({str(err).strip().splitlines()[-1]}); use names such as nprobe (IVF), efSearch (HNSW), "
                "quantizer_efSearch, comma-separated"
            ) from err

    def _configure_search(self, k: int) -> None:
        if self.search_params:
            self._apply_search_params()
        if self.k_factor is not None:
            refine_index(self.index).k_factor = self.k_factor
        if self.ef_search is not None:
            hnsw_graph(self.index).hnsw.efSearch = self._ef(k)

    def _ef(self, k: int) -> int:
        """efSearch for ``k`` results: ``max(ef_search, k * k_factor)`` (the graph's own value without ef_search)."""
        refine = refine_index(self.index)
        depth = int(k * refine.k_factor) if refine is not None else k
        if self.ef_search is None:
            return hnsw_graph(self.index).hnsw.efSearch
        return hnsw_breadth(self.ef_search, depth)

    def _search_parameters(self, selector, k: int):
        if hnsw_graph(self.index) is None:
            return super()._search_parameters(selector, k)
        self._configure_search(k)
        graph = faiss.SearchParametersHNSW(sel=selector, efSearch=self._ef(k))
        refine = refine_index(self.index)
        if refine is None:
            return graph
        params = faiss.IndexRefineSearchParameters(k_factor=refine.k_factor)
        params.base_index_params, params.referenced_base = graph, graph  # keep the inner parameters alive
        return params

    def _search_among(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.locality_clusters is None:
            return super()._search_among(queries, k, allowed)
        # FAISS's IDMap translates only a top-level selector, not one inside a refine's base parameters: select
        # storage slots on the wrapped index and map its answers back to corpus rows.
        stored, slot = self._storage_order()
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(slot[allowed]))
        scores, ids = faiss.downcast_index(self.index).index.search(
            queries, k, params=self._search_parameters(selector, k)
        )
        return scores, np.where(ids >= 0, stored[np.maximum(ids, 0)], -1)

    def _storage_order(self) -> tuple[np.ndarray, np.ndarray]:
        """``(stored [N], slot [N])``: the corpus row of each storage slot and its inverse, read from the IDMap
        once per built or loaded index (a pre-filtered evaluation searches once per topic)."""
        cached = getattr(self, "_storage_cache", None)
        if cached is None or cached[0] is not self.index:
            stored = faiss.vector_to_array(faiss.downcast_index(self.index).id_map)
            slot = np.empty_like(stored)
            slot[stored] = np.arange(len(stored))
            self._storage_cache = cached = (self.index, stored, slot)
        return cached[1], cached[2]

    def describe(self) -> dict:
        names = ("ef_construction", "ef_search", "k_factor", "locality_clusters")
        options = {name: getattr(self, name) for name in names}
        return {
            **super().describe(),
            "factory": self.factory,
            "search_params": self.search_params,
            **{name: value for name, value in options.items() if value is not None},
        }
