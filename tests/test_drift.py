"""Drift watch: reference bins from validation scores, and the PSI of the last live scores."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from detector.core.drift import DRIFT_BINS, DriftMonitor, reference_distribution

WINDOWS = 5000
MIN_WINDOWS = 1000


def _scores(n: int, seed: int) -> np.ndarray:
    """Window scores as a model gives them: positive, right-skewed (reconstruction errors)."""
    return np.random.default_rng(seed).gamma(2.0, 1.0, n)


REFERENCE = _scores(50_000, seed=0)
EDGES, SHARES = reference_distribution(REFERENCE)


def _monitor(windows: int = WINDOWS, min_windows: int = MIN_WINDOWS) -> DriftMonitor:
    return DriftMonitor(EDGES, SHARES, windows, min_windows)


def _psi_after(*batches: np.ndarray, windows: int = WINDOWS) -> float:
    monitor = _monitor(windows)
    for batch in batches:
        monitor.observe(batch)
    return monitor.psi()


# reference_distribution


def test_reference_has_one_more_share_than_edges_and_shares_sum_to_one() -> None:
    assert len(EDGES) == DRIFT_BINS - 1
    assert len(SHARES) == len(EDGES) + 1
    assert sum(SHARES) == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(EDGES))


def test_reference_of_continuous_scores_cuts_at_deciles() -> None:
    assert pytest.approx([0.1] * DRIFT_BINS, abs=1e-3) == SHARES
    np.testing.assert_allclose(EDGES, np.quantile(REFERENCE, np.arange(1, 10) / 10))


def test_reference_bin_holds_scores_up_to_and_including_its_edge() -> None:
    edges, shares = reference_distribution(np.array([1.0, 2.0, 3.0, 4.0]), bins=2)
    assert edges == [2.5]
    assert shares == [0.5, 0.5]
    # A score equal to an edge counts in the bin below it: (edges[i-1], edges[i]].
    edges, shares = reference_distribution(np.array([1.0, 2.0, 2.0, 3.0]), bins=2)
    assert edges == [2.0]
    assert shares == [0.75, 0.25]


def test_reference_merges_tied_quantiles_into_fewer_bins() -> None:
    scores = np.array([0.0] * 85 + [1.0] * 15)
    edges, shares = reference_distribution(scores, bins=10)
    assert edges == [0.0, 1.0]  # deciles 1-8 are all 0, decile 9 is 1
    assert shares == pytest.approx([0.85, 0.15, 0.0])


def test_reference_of_constant_scores_is_valid() -> None:
    edges, shares = reference_distribution(np.full(100, 3.0))
    assert edges == [3.0]
    assert shares == [1.0, 0.0]
    monitor = DriftMonitor(edges, shares, windows=10, min_windows=1)
    monitor.observe(np.full(10, 3.0))
    assert monitor.psi() == 0.0


@pytest.mark.parametrize(
    "scores", [np.array([]), np.array([1.0, math.nan]), np.array([1.0, math.inf])]
)
def test_reference_refuses_empty_or_non_finite_scores(scores: np.ndarray) -> None:
    with pytest.raises(ValueError, match="finite"):
        reference_distribution(scores)


def test_reference_refuses_fewer_than_two_bins() -> None:
    with pytest.raises(ValueError, match="2 bins"):
        reference_distribution(np.arange(10.0), bins=1)


@settings(max_examples=200, deadline=None)
@given(
    scores=arrays(
        np.float64,
        st.integers(1, 200),
        elements=st.floats(-1e6, 1e6) | st.sampled_from([0.0, 1.0, 2.0]),
    ),
    bins=st.integers(2, 20),
)
def test_reference_is_well_formed_for_any_scores(scores: np.ndarray, bins: int) -> None:
    """Property: sorted distinct edges, at most ``bins`` bins, shares summing to 1."""
    edges, shares = reference_distribution(scores, bins)
    assert len(shares) == len(edges) + 1 <= bins
    assert all(a < b for a, b in itertools.pairwise(edges))
    assert all(share >= 0 for share in shares)
    assert sum(shares) == pytest.approx(1.0)


# DriftMonitor: the PSI users alert on


def test_psi_is_near_zero_for_scores_from_the_reference_distribution() -> None:
    for seed in (1, 2, 3):
        assert _psi_after(_scores(WINDOWS, seed)) < 0.1


def test_psi_is_exactly_zero_for_the_validation_scores_themselves() -> None:
    """The monitor bins scores exactly as the reference did (same edge semantics)."""
    tied = np.round(_scores(1000, seed=4), 1)  # many scores sit exactly on an edge
    edges, shares = reference_distribution(tied)
    monitor = DriftMonitor(edges, shares, windows=len(tied), min_windows=1)
    monitor.observe(tied)
    assert monitor.psi() == 0.0


@pytest.mark.parametrize(
    "shift",
    [
        pytest.param(lambda s: s * 1.5, id="scaled x1.5"),
        pytest.param(lambda s: s * 2.0, id="scaled x2"),
        pytest.param(lambda s: s + 3 * math.sqrt(2.0), id="shifted by 3 std"),
    ],
)
def test_psi_is_significant_when_live_scores_shift(
    shift: Callable[[np.ndarray], np.ndarray],
) -> None:
    live = shift(_scores(WINDOWS, seed=5))
    assert _psi_after(live) > 0.25


def test_psi_matches_the_formula_on_a_hand_computed_case() -> None:
    monitor = DriftMonitor([1.0], [0.5, 0.5], windows=4, min_windows=4)
    monitor.observe(np.array([0.0, 0.5, 1.0, 2.0]))  # 1.0 sits on the edge: lower bin
    # live (0.75, 0.25) against (0.5, 0.5)
    expected = 0.25 * math.log(0.75 / 0.5) + (-0.25) * math.log(0.25 / 0.5)
    assert monitor.psi() == pytest.approx(expected)


def test_psi_is_nan_until_min_windows_scores_then_a_number() -> None:
    monitor = _monitor(min_windows=MIN_WINDOWS)
    assert math.isnan(monitor.psi())
    scores = _scores(MIN_WINDOWS, seed=6)
    monitor.observe(scores[:-1])
    assert len(monitor) == MIN_WINDOWS - 1
    assert math.isnan(monitor.psi())
    monitor.observe(scores[-1:])
    assert len(monitor) == MIN_WINDOWS
    assert math.isfinite(monitor.psi())


def test_only_the_last_windows_scores_count() -> None:
    """A long shifted stream is forgotten once ``windows`` normal scores follow it."""
    monitor = _monitor()
    for seed in range(10, 20):  # 10 x windows drifted scores
        monitor.observe(_scores(WINDOWS, seed) * 3)
    assert monitor.psi() > 0.25
    assert len(monitor) == WINDOWS
    normal = _scores(WINDOWS, seed=7)
    for chunk in np.array_split(normal, 7):
        monitor.observe(chunk)
    assert len(monitor) == WINDOWS
    assert monitor.psi() == _psi_after(normal)
    assert monitor.psi() < 0.1


def test_one_batch_larger_than_windows_keeps_its_last_scores() -> None:
    drifted_then_normal = np.concatenate([_scores(3 * WINDOWS, 8) * 3, _scores(WINDOWS, 9)])
    monitor = _monitor()
    monitor.observe(drifted_then_normal)
    assert len(monitor) == WINDOWS
    assert monitor.psi() == _psi_after(drifted_then_normal[-WINDOWS:])
    assert monitor.psi() < 0.1


def test_observing_an_empty_batch_changes_nothing() -> None:
    monitor = _monitor()
    monitor.observe(np.array([]))
    assert len(monitor) == 0
    assert math.isnan(monitor.psi())
    monitor.observe(_scores(WINDOWS, seed=10))
    before = monitor.psi()
    monitor.observe(np.array([], dtype=np.float32))
    assert len(monitor) == WINDOWS
    assert monitor.psi() == before


def test_nan_scores_are_not_counted() -> None:
    monitor = _monitor(windows=10, min_windows=2)
    monitor.observe(np.array([math.nan] * 5))
    assert len(monitor) == 0
    monitor.observe(np.array([1.0, math.nan, 2.0]))
    assert len(monitor) == 2


def test_scores_beyond_the_reference_range_land_in_the_end_bins() -> None:
    top, bottom = max(REFERENCE), min(REFERENCE)  # inside the top and bottom bins
    assert bottom <= EDGES[0] and top > EDGES[-1]
    for outside, inside in [(1e12, top), (math.inf, top), (0.0, bottom), (-5.0, bottom)]:
        psi = _psi_after(np.full(WINDOWS, outside))
        assert math.isfinite(psi)
        assert psi > 0.25
        assert psi == _psi_after(np.full(WINDOWS, inside))


def test_float32_scores_are_accepted() -> None:
    live = _scores(WINDOWS, seed=11).astype(np.float32)
    assert _psi_after(live) < 0.1


def test_reset_forgets_every_score() -> None:
    monitor = _monitor()
    monitor.observe(_scores(WINDOWS, seed=12) * 3)
    monitor.reset()
    assert len(monitor) == 0
    assert math.isnan(monitor.psi())
    normal = _scores(WINDOWS, seed=13)
    monitor.observe(normal)
    assert monitor.psi() == _psi_after(normal)


def test_most_bins_allowed_counts_the_top_bin() -> None:
    scores = np.arange(25_500, dtype=np.float64)
    edges, shares = reference_distribution(scores, bins=255)
    assert len(shares) == 255
    monitor = DriftMonitor(edges, shares, windows=len(scores), min_windows=1)
    monitor.observe(scores)
    assert monitor.psi() == 0.0
    monitor.observe(np.full(len(scores), 1e9))  # all in bin 254, the last a uint8 holds
    everything_on_top = monitor.psi()
    monitor.reset()
    monitor.observe(np.full(len(scores), scores[-1]))
    assert everything_on_top == monitor.psi() > 0.25


@pytest.mark.parametrize(
    ("edges", "shares", "windows", "min_windows", "match"),
    [
        ([1.0], [1.0], 10, 1, "one more share"),
        ([1.0], [0.2, 0.3, 0.5], 10, 1, "one more share"),
        (list(range(255)), [1 / 256] * 256, 10, 1, "255 bins"),
        ([1.0], [0.5, 0.5], 10, 0, "min_windows"),
        ([1.0], [0.5, 0.5], 10, 11, "min_windows"),
    ],
)
def test_monitor_refuses_inconsistent_settings(
    edges: list[float], shares: list[float], windows: int, min_windows: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        DriftMonitor(edges, shares, windows, min_windows)


# properties

_live_score = st.floats(-1e9, 1e9) | st.sampled_from(EDGES) | st.just(0.0)


@settings(max_examples=200, deadline=None)
@given(
    scores=arrays(np.float64, st.integers(0, 120), elements=_live_score),
    windows=st.integers(1, 40),
    data=st.data(),
)
def test_psi_is_finite_and_non_negative_once_min_windows_reached(
    scores: np.ndarray, windows: int, data: st.DataObject
) -> None:
    min_windows = data.draw(st.integers(1, windows))
    monitor = _monitor(windows, min_windows)
    monitor.observe(scores)
    assert len(monitor) == min(len(scores), windows)
    psi = monitor.psi()
    if len(scores) < min_windows:
        assert math.isnan(psi)
    else:
        assert math.isfinite(psi) and psi >= 0.0


@settings(max_examples=300, deadline=None)
@given(
    scores=arrays(np.float64, st.integers(0, 120), elements=_live_score),
    windows=st.integers(1, 40),
    data=st.data(),
)
def test_split_batches_give_the_same_psi_as_one_batch(
    scores: np.ndarray, windows: int, data: st.DataObject
) -> None:
    """Property: how scores are batched never matters, only the last ``windows`` of them."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(scores)), max_size=8)))
    split = _monitor(windows, min_windows=1)
    for batch in np.split(scores, cuts):
        split.observe(batch)
    whole = _monitor(windows, min_windows=1)
    whole.observe(scores)
    tail_only = _monitor(windows, min_windows=1)
    tail_only.observe(scores[-windows:] if len(scores) else scores)
    assert len(split) == len(whole) == len(tail_only) == min(len(scores), windows)
    if len(scores) == 0:
        assert math.isnan(split.psi()) and math.isnan(whole.psi())
    else:
        assert split.psi() == whole.psi() == tail_only.psi()
