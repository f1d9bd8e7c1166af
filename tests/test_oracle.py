"""The tests' oracle comparison (tests/oracle.py): ties in either order, nothing else."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import assert_same_ranking, assert_true_top_k, brute_force


def test_items_at_the_same_distance_may_come_back_in_either_order_or_at_the_k_th_place() -> None:
    distances = {"a": 0.1, "b": 0.3, "b-copy": 0.3, "c": 0.5, "d": 0.5 + 2e-6}
    for got in (["a", "b", "b-copy", "c"], ["a", "b-copy", "b", "c"], ["a", "b", "b-copy", "d"]):
        assert_true_top_k(got, distances, k=4)


def test_a_wrong_neighbour_or_a_swap_of_different_distances_is_refused() -> None:
    distances = {"a": 0.1, "b": 0.3, "c": 0.5, "d": 0.7}
    for got in (["b", "a", "c"], ["a", "b", "d"], ["a", "b", "b"], ["a", "b"]):
        with pytest.raises(AssertionError):
            assert_true_top_k(got, distances, k=3)


def test_hits_are_compared_by_their_own_distances() -> None:
    class Hit:
        def __init__(self, key: str, distance: float) -> None:
            self.key, self.distance = key, distance

    assert_same_ranking([Hit("x", 0.2), Hit("y", 0.2)], [Hit("y", 0.2), Hit("x", 0.2)])
    with pytest.raises(AssertionError, match="not a tie"):
        assert_same_ranking([Hit("x", 0.2), Hit("y", 0.4)], [Hit("y", 0.4), Hit("x", 0.2)])


def test_brute_force_normalises_the_query_and_measures_squared_l2() -> None:
    matrix = np.eye(3, dtype=np.float32)
    distances = brute_force(["x", "y", "z"], matrix, np.array([3.0, 0.0, 0.0]))
    assert distances == pytest.approx({"x": 0.0, "y": 2.0, "z": 2.0})
