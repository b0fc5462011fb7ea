"""Ward pre-clustering against scipy's ``linkage(method="ward")``: the same partition at every cut."""

import numpy as np
import pytest
import torch

from lightning_retrieval.models.interests.preclustering import PreClusteringInterests, ward_labels

hierarchy = pytest.importorskip("scipy.cluster.hierarchy")


def same_partition(ours: np.ndarray, theirs: np.ndarray) -> bool:
    """True when the two label vectors group the points identically (labels may differ)."""
    pairs = {(a, b) for a, b in zip(ours.tolist(), theirs.tolist())}
    return len(pairs) == len(set(ours.tolist())) == len(set(theirs.tolist()))


def scipy_cut(points: np.ndarray, k: int) -> np.ndarray:
    if len(points) == 1:
        return np.zeros(1, dtype=int)
    return hierarchy.fcluster(hierarchy.linkage(points, method="ward"), k, criterion="maxclust")


IMPLEMENTATIONS = ["compiled", "torch"]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ward_equals_scipy_linkage_at_every_cut(seed, implementation):
    rng = np.random.default_rng(seed)
    batch, length, dim = 6, 24, 5
    centres = rng.normal(size=(4, dim)) * 3
    x = centres[rng.integers(0, 4, size=(batch, length))] + rng.normal(size=(batch, length, dim))
    lengths = np.array([24, 20, 13, 7, 3, 1])  # padded users, one shorter than some cuts
    mask = np.arange(length)[None] < lengths[:, None]
    xt, mt = torch.from_numpy(x), torch.from_numpy(mask)
    for k in range(1, length + 1):
        labels = ward_labels(xt, mt, k, implementation=implementation).numpy()
        for u in range(batch):
            n = lengths[u]
            assert (labels[u, n:] == -1).all()
            ours = labels[u, :n]
            assert len(set(ours.tolist())) == min(k, n)
            assert same_partition(ours, scipy_cut(x[u, :n], min(k, n))), (seed, k, u)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_ward_ignores_padding_values(implementation):
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(2, 10, 3)))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    noisy = x.clone()
    noisy[1, 6:] = 1e6  # garbage in the padded slots must not change the clusters
    np.testing.assert_array_equal(
        ward_labels(x, mask, 3, implementation=implementation).numpy(),
        ward_labels(noisy, mask, 3, implementation=implementation).numpy(),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_and_torch_ward_give_the_same_labels_bit_for_bit(dtype):
    """Ragged masks with holes anywhere, several cuts, and points that make Ward distances tie: small integer grids
    of 1 to 3 dimensions (exact ties), the same grids scaled by 0.1 (ties that rounding makes or breaks), and
    repeats of three points. The compiled kernel must break every tie as the batched torch loop."""
    gen = torch.Generator().manual_seed(7)
    for trial in range(160):
        batch, length, dim = 1 + trial % 9, 1 + (7 * trial) % 41, 1 + trial % 3
        grid = torch.randint(0, 2 + trial % 3, (batch, length, dim), generator=gen).to(dtype)
        if trial % 4 == 0:
            x = grid
        elif trial % 4 == 1:
            x = grid * 0.1
        elif trial % 4 == 2:
            x = torch.randn(batch, 3, dim, generator=gen, dtype=dtype)[:, torch.randint(0, 3, (length,), generator=gen)]
        else:
            x = torch.randn(batch, length, dim + 2, generator=gen, dtype=dtype)
        mask = torch.rand(batch, length, generator=gen) < 0.8
        for k in (1, 2, 5):
            torch_labels = ward_labels(x, mask, k, implementation="torch")
            compiled = ward_labels(x, mask, k, implementation="compiled")
            assert torch.equal(torch_labels, compiled), (trial, k)
            live = [len(set(row[m].tolist())) for row, m in zip(compiled, mask)]
            assert live == [min(k, int(m.sum())) for m in mask]  # exactly min(k, n) clusters per user


def test_ward_refuses_unknown_implementations_and_uncompilable_inputs():
    x, mask = torch.randn(2, 5, 3), torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="implementation must be one of .*'compiled'.*got 'numba'"):
        ward_labels(x, mask, 2, implementation="numba")
    with pytest.raises(ValueError, match="compiled Ward takes CPU float32/float64 points, got torch.float16"):
        ward_labels(x.half(), mask, 2, implementation="compiled")
    # auto (the module's choice) gives the torch loop's labels
    assert torch.equal(
        ward_labels(x.double(), mask, 2, implementation="torch"),
        ward_labels(x.double(), mask, 2),
    )


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_ward_names_bad_arguments_instead_of_reading_out_of_bounds(implementation):
    """The kernel has no bounds checks: shapes, dtypes and k are checked before it runs, for both paths."""
    x, mask = torch.randn(2, 6, 3), torch.ones(2, 6, dtype=torch.bool)
    for bad_mask in (torch.ones(2, 9, dtype=torch.bool), torch.ones(3, 6, dtype=torch.bool), mask.long()):
        with pytest.raises(ValueError, match=r"points \[B, L, D\] and a bool mask \[B, L\], got \[2, 6, 3\]"):
            ward_labels(x, bad_mask, 2, implementation=implementation)
    for bad_k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k .* must be an int >= 1"):
            ward_labels(x, mask, bad_k, implementation=implementation)
    with pytest.raises(ValueError, match=r"distances must be \[B, L, L\] = \[2, 6, 6\] of the points' dtype"):
        ward_labels(x, mask, 2, distances=torch.zeros(2, 6, 6, dtype=torch.float64), implementation=implementation)
    with pytest.raises(ValueError, match=r"distances must be \[B, L, L\]"):
        ward_labels(x, mask, 2, distances=torch.zeros(2, 6, 5), implementation=implementation)
    assert ward_labels(x.requires_grad_(), mask, 2, implementation=implementation).shape == (2, 6)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_ward_refuses_non_finite_distances_between_real_points(implementation):
    """NaN in a point, or float32 overflow, is an error naming the users; garbage in padding is not."""
    x, mask = torch.randn(4, 6, 3, generator=torch.Generator().manual_seed(0)), torch.ones(4, 6, dtype=torch.bool)
    mask[3, 4:] = False
    padded_garbage = x.clone()
    padded_garbage[3, 4:] = float("nan")
    assert (ward_labels(padded_garbage, mask, 2, implementation=implementation)[3, 4:] == -1).all()
    nan_point = x.clone()
    nan_point[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite squared distances .* users \[1\]"):
        ward_labels(nan_point, mask, 2, implementation=implementation)
    huge = x.clone()
    huge[2] *= 4e19  # squared distances overflow float32
    with pytest.raises(ValueError, match=r"users \[2\] .*float overflow"):
        ward_labels(huge, mask, 4, implementation=implementation)
    with pytest.raises(ValueError, match=r"users \[2\]"):  # also when no user needs a merge (k = n = 6)
        ward_labels(huge, mask, 6, implementation=implementation)


def test_preclustering_forward_is_batch_independent():
    rng = np.random.default_rng(4)
    history = torch.from_numpy(rng.normal(size=(5, 12, 8)).astype(np.float32))
    mask = torch.from_numpy(np.arange(12)[None] < np.array([12, 9, 4, 12, 2])[:, None])
    module = PreClusteringInterests(8, num_interests=3, method="ward")
    together, valid = module(history, mask)
    for u in range(5):
        alone, alone_valid = module(history[u : u + 1], mask[u : u + 1])
        torch.testing.assert_close(alone[0], together[u])
        assert alone_valid[0].tolist() == valid[u].tolist()


def test_pairwise_distances_equal_the_full_cdist_bit_for_bit():
    from lightning_retrieval.models.interests.preclustering import pairwise_squared_distances, squared_distances

    x = torch.randn(7, 31, 16, generator=torch.Generator().manual_seed(0))
    pairs = pairwise_squared_distances(x, block=5)  # 31 is not a multiple of the block
    assert torch.equal(pairs, squared_distances(x, x))
    assert torch.equal(pairs, pairs.transpose(1, 2))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_ward_float32_histories_match_scipy_and_the_given_distance_matrix(implementation):
    """Training-shaped input (float32, width 64, history 50, ragged lengths): scipy's partition at K = 1, 4, 7;
    passing the distance matrix (as the module does) gives the same labels and leaves the matrix untouched."""
    from lightning_retrieval.models.interests.preclustering import pairwise_squared_distances

    rng = np.random.default_rng(5)
    batch, length, dim = 24, 50, 64
    centres = rng.normal(size=(6, dim))
    x = (centres[rng.integers(0, 6, size=(batch, length))] + rng.normal(size=(batch, length, dim))).astype(np.float32)
    lengths = rng.integers(1, length + 1, size=batch)
    lengths[:3] = length
    mask = np.arange(length)[None] < lengths[:, None]
    xt, mt = torch.from_numpy(x), torch.from_numpy(mask)
    distances = pairwise_squared_distances(xt)
    before = distances.clone()
    for k in (1, 4, 7):
        labels = ward_labels(xt, mt, k, implementation=implementation).numpy()
        given = ward_labels(xt, mt, k, distances=distances, implementation=implementation)
        assert np.array_equal(labels, given.numpy())
        for u in range(batch):
            n = lengths[u]
            assert (labels[u, n:] == -1).all()
            assert same_partition(labels[u, :n], scipy_cut(x[u, :n].astype(np.float64), min(k, n))), (k, u)
    assert torch.equal(distances, before)
