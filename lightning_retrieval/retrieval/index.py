"""Index backends (registry kind ``index``), all inner-product: the models score by dot product.

FAISS backends (``exact``, ``hnsw``, ``ivfpq``): on a host where ``faiss.get_num_gpus() > 0`` (faiss-gpu
installed) the indexes FAISS can run on GPU move there automatically; HNSW has no GPU implementation in
FAISS and stays on CPU (``describe`` says so). ``exact_torch`` is exhaustive search as a batched torch
matmul + top-k, on CUDA when torch sees a GPU: on CPU it measured 1.56x faster than ``IndexFlatIP`` for
100k users x 1M items (``benchmarks/eval_throughput.py``).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import faiss
import numpy as np
import torch

from lightning_retrieval.registry import component_kind, register


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

    def __init__(self, use_gpu: bool | None = None):
        self.use_gpu = use_gpu
        self.index = None
        self.on_gpu = False
        self.build_seconds = 0.0
        self.dim = 0

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

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores [Q, k], ids [Q, k])`` by inner product, best first.

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
        try:
            scores, ids = self._search(queries, k)
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
                index.train(vectors)
            index.add(vectors)
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
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores, ids = self.index.search(queries, k, params=self._search_parameters(selector, k))
        return scores, ids, len(allowed) if self.exact else min(len(allowed), self.size)


@register("exact_torch")
class TorchExactIndex(IndexBackend):
    """Exhaustive inner-product search as batched ``torch.topk(queries @ items.T)``; CUDA when available.

    Args:
        query_batch: queries per matmul (bounds memory at ``query_batch x N`` scores).
    """

    exact = True

    def __init__(self, query_batch: int = 256, use_gpu: bool | None = None):
        super().__init__(use_gpu)
        self.query_batch = query_batch

    def _build(self, vectors: np.ndarray) -> None:
        want_gpu = self.use_gpu if self.use_gpu is not None else torch.cuda.is_available()
        if want_gpu and not torch.cuda.is_available():
            raise RetrievalIndexError("use_gpu=True but torch sees no CUDA device")
        self.device = torch.device("cuda" if want_gpu else "cpu")
        self.on_gpu = want_gpu
        self.index = torch.from_numpy(vectors).to(self.device)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = np.empty((len(queries), k), dtype=np.float32)
        ids = np.empty((len(queries), k), dtype=np.int64)
        q = torch.from_numpy(queries)
        with torch.no_grad():
            for s in range(0, len(queries), self.query_batch):
                top = torch.topk(q[s : s + self.query_batch].to(self.device) @ self.index.T, k, dim=1)
                scores[s : s + self.query_batch] = top.values.cpu().numpy()
                ids[s : s + self.query_batch] = top.indices.cpu().numpy()
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
    """Exhaustive inner-product search (``IndexFlatIP``): the reference, and the default for evaluation."""

    exact = True

    def _create(self, dim: int, num_vectors: int):
        return faiss.IndexFlatIP(dim)


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
        self.m, self.ef_construction, self.ef_search = m, ef_construction, ef_search

    def _create(self, dim: int, num_vectors: int):
        index = faiss.IndexHNSWFlat(dim, self.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        return index

    def _configure_search(self, k: int) -> None:
        self.index.hnsw.efSearch = max(self.ef_search, k)

    def _search_parameters(self, selector, k: int):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.ef_search, k))


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
        self.nlist, self.pq_m, self.nbits, self.nprobe = nlist, pq_m, nbits, nprobe

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
