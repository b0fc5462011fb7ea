"""The converter that hands our split to the peers (benchmarks/peers/export_split.py)."""

import importlib.util

import numpy as np

from conftest import REPO


def _export_split():
    spec = importlib.util.spec_from_file_location("export_split", REPO / "benchmarks/peers/export_split.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_padded_histories_are_the_previous_items_of_the_same_user_right_aligned_and_shifted():
    item = np.array([10, 11, 12, 13, 20, 21])  # user 0: rows 0-3, user 1: rows 4-5
    user_start = np.array([0, 0, 4, 4])
    end = np.array([0, 3, 4, 6])  # history = rows [user_start, end)
    out = _export_split().padded_histories(item, user_start, end, length=3)
    expected = np.array(
        [
            [0, 0, 0],  # no history
            [11, 12, 13],  # ids + 1 (0 is the peers' padding id)
            [0, 0, 0],  # user 1's first row: nothing of user 0 leaks in
            [0, 21, 22],
        ]
    )
    np.testing.assert_array_equal(out, expected)
