"""The synthetic-crosses dataset: seeded, and at full cross strength the signal is only in the crosses."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_retrieval.data.synthetic_crosses import (
    SyntheticCrossesSource,
    feature_associations,
    mutual_information,
)
from lightning_retrieval.errors import ConfigError
from lightning_retrieval.registry import resolve

SMALL = {"num_users": 800, "num_items": 400, "interactions_per_user": 15}


def test_the_seed_fixes_the_data_and_another_seed_changes_it():
    a, b = SyntheticCrossesSource(seed=7, **SMALL), SyntheticCrossesSource(seed=7, **SMALL)
    assert a.load().interactions.equals(b.load().interactions)
    assert a.side_features().users.equals(b.side_features().users)
    assert a.side_features().items.equals(b.side_features().items)
    other = SyntheticCrossesSource(seed=8, **SMALL).load().interactions
    assert not other["item_id"].equals(a.load().interactions["item_id"])


def test_full_cross_strength_leaves_no_main_effect_but_a_strong_cross():
    crossed = feature_associations(SyntheticCrossesSource(cross_strength=1.0, **SMALL))
    assert crossed["main"] < 0.01 and crossed["pair_vs_single"] < 0.03  # plug-in bias of 12k draws: ~0.01 bits
    assert crossed["cross"] > 0.6
    main_only = feature_associations(SyntheticCrossesSource(cross_strength=0.0, **SMALL))
    assert main_only["main"] > 0.6  # segment -> category
    half = feature_associations(SyntheticCrossesSource(cross_strength=0.5, **SMALL))
    assert crossed["main"] < half["main"] < main_only["main"]


def test_mutual_information_of_independent_and_identical_codes():
    rng = np.random.default_rng(0)
    a = rng.integers(4, size=20000)
    assert mutual_information(a, rng.integers(4, size=20000)) < 0.002
    assert mutual_information(a, a) == pytest.approx(2.0, abs=0.01)


def test_side_features_and_registry():
    source = resolve("datasets", "synthetic_crosses")(**SMALL)
    side = source.side_features()
    assert [s.column for s in side.user_specs] == ["segment", "region", "device"]
    assert [s.column for s in side.item_specs] == ["category", "style", "brand"]
    raw = source.load()
    assert set(raw.interactions["item_id"]) <= set(side.items["item_id"])
    assert len(raw.interactions) == SMALL["num_users"] * SMALL["interactions_per_user"]
    control = resolve("datasets", "synthetic_crosses")(side_features=False, **SMALL)
    assert control.side_features() is None and control.load().interactions.equals(raw.interactions)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"cross_strength": 1.5}, "cross_strength"), ({"num_items": 10}, "num_items"), ({"noise": -0.1}, "noise")],
)
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        SyntheticCrossesSource(**kwargs)


def test_interaction_probabilities_are_what_the_generator_samples():
    source = SyntheticCrossesSource(cross_strength=0.7, **SMALL)
    probs = source.interaction_probabilities()
    assert probs.shape == (SMALL["num_users"], SMALL["num_items"])
    assert np.allclose(probs.sum(1), 1.0)
    inter = source.load().interactions
    users, items = source.side_features().users, source.side_features().items
    pair = (users["segment"] * 4 + users["region"]).to_numpy()
    cell = (items["category"] * 4 + items["style"]).to_numpy()

    def by_pair_and_cell(weights: np.ndarray) -> np.ndarray:
        """[16 user pairs, 16 item cells] share of the probability mass of ``weights [U, N]``."""
        table = np.zeros((16, 16))
        np.add.at(table, (pair[:, None].repeat(len(cell), 1), cell[None, :].repeat(len(pair), 0)), weights)
        return table / table.sum(1, keepdims=True)

    counts = np.zeros((SMALL["num_users"], SMALL["num_items"]))
    np.add.at(counts, (inter["user_id"].to_numpy(), inter["item_id"].to_numpy()), 1.0)
    observed = by_pair_and_cell(counts)
    main_only = SyntheticCrossesSource(cross_strength=0.0, **SMALL).interaction_probabilities()
    error = np.abs(observed - by_pair_and_cell(probs)).max()
    assert error < 0.05 < np.abs(observed - by_pair_and_cell(main_only)).max()
