"""bench.nab: NAB's standard-profile scorer, against NAB's own tests and published figures.

The last test checks how bench/quality.py feeds it on the NAB development set.

Expectations marked "NAB tests/..." are ported from numenta/NAB's unit tests; "NAB results/..."
are per-row or per-file values NAB wrote into its published result files. The rest are computed
by hand from the rules in nab/sweeper.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.datasets import Stream
from bench.nab import (
    STANDARD,
    CostMatrix,
    normalise,
    onsets,
    probation_rows,
    scaled_sigmoid,
    score_set,
    score_stream,
    windows_from_labels,
)
from bench.quality import _pool, _stream_record, _summarise_dataset, _table

PUBLISHED = Path(__file__).resolve().parent.parent / "bench" / "nab_published"
# NAB tests/unit/scorer_test.py uses this cost matrix (not the standard profile).
SCORER_TEST_COSTS = CostMatrix(tp=1.1, fp=0.11, fn=1.2)
MAX_TP = 0.9866142981514305  # scaledSigmoid(-1.0), hard-coded in NAB's scorer_test.py


def _raw(windows: list[tuple[int, int]], detections: list[int], rows: int, probation: int = 0,
         costs: CostMatrix = STANDARD) -> float:  # fmt: skip
    return score_stream(windows, detections, rows, probation, costs).raw


# --- the scaled sigmoid and the probation ----------------------------------------------------


def test_scaled_sigmoid_values() -> None:
    # NAB nab/sweeper.py scaledSigmoid docstring and tests/unit/scorer_test.py constants.
    assert float(scaled_sigmoid(-1.0)) == pytest.approx(MAX_TP, abs=1e-15)
    assert float(scaled_sigmoid(-0.5)) == pytest.approx(0.8482836399575131, abs=1e-15)
    assert float(scaled_sigmoid(0.0)) == 0.0
    assert float(scaled_sigmoid(1.0)) == pytest.approx(-MAX_TP, abs=1e-15)
    # Past 3 it is exactly -1 (nab/sweeper.py: ``> 3.0``); at 3, not quite.
    assert float(scaled_sigmoid(3.0001)) == -1.0 and float(scaled_sigmoid(1e6)) == -1.0
    assert -1.0 < float(scaled_sigmoid(3.0)) < -0.9999


@pytest.mark.parametrize(
    ("rows", "percent", "expected"),
    # NAB tests/integration/sweeper_test.py testGetProbationaryLength
    [(100, 0.0, 0), (100, 1.0, 100), (100, 0.1, 10), (100, 0.15, 15), (5000, 0.1, 500),
     (6000, 0.1, 500)],
)  # fmt: skip
def test_probation_rows_as_nab(rows: int, percent: float, expected: int) -> None:
    assert probation_rows(rows, percent) == expected


def test_probation_rows_standard() -> None:
    assert probation_rows(1624) == 243 and probation_rows(15902) == 750
    assert probation_rows(4999) == 749 and probation_rows(5000) == 750


# --- NAB's own scorer tests (tests/unit/scorer_test.py) -------------------------------------


def test_nab_null() -> None:
    # testNull
    assert _raw([], [], 5, costs=SCORER_TEST_COSTS) == 0.0


def test_nab_false_positives() -> None:
    # testFalsePositives: predictions [0, 1, 0, 1, 0], no window
    assert _raw([], [1, 3], 5, costs=SCORER_TEST_COSTS) == pytest.approx(-2 * 0.11)


def test_nab_false_negatives() -> None:
    # testFalseNegatives: labels [0, 1, 1, 0, 1, 1, 0], no prediction
    assert _raw([(1, 2), (4, 5)], [], 7, costs=SCORER_TEST_COSTS) == pytest.approx(-2 * 1.2)


def test_nab_false_positives_in_probation() -> None:
    # testFalsePositivesInProbationary (probation 4) and ...BeforeAndAfterProbationary (3)
    assert _raw([], [1, 3], 5, probation=4, costs=SCORER_TEST_COSTS) == 0.0
    assert _raw([], [1, 3], 5, probation=3, costs=SCORER_TEST_COSTS) == pytest.approx(-0.11)


def test_nab_true_positives() -> None:
    first = 0.8482836399575131 * 1.1 / MAX_TP
    second = 0.9866142981514305 * 1.1 / MAX_TP
    costs = SCORER_TEST_COSTS
    # testTruePositives1: the detection on the window's last row of two
    assert _raw([(1, 2)], [2], 7, costs=costs) == pytest.approx(first)
    # testTruePositives1WithFN
    assert _raw([(1, 2), (4, 5)], [2], 7, costs=costs) == pytest.approx(first - 1.2)
    # testTruePositives2: the detection on the window's first row
    assert _raw([(4, 5)], [4], 7, costs=costs) == pytest.approx(second)
    # testTruePositives3: a second detection in the same window adds nothing
    assert _raw([(4, 5)], [4, 5], 7, costs=costs) == pytest.approx(second)
    # testTruePositivesMultiple
    assert _raw([(1, 2), (4, 5)], [2, 4], 7, costs=costs) == pytest.approx(first + second)


def test_nab_sweep_score_signs() -> None:
    # tests/integration/sweeper_test.py testCalcSweepScoreWindowScoreInteraction: 100 rows,
    # windows (30, 39) and (75, 95), probation 10 %: a detection in a window scores positive,
    # one anywhere else negative, one in the probation nothing.
    windows, rows = [(30, 39), (75, 95)], 100
    null = -2.0
    for row in range(rows):
        delta = _raw(windows, [row], rows, probation=probation_rows(rows, 0.1)) - null
        if row < 10:
            assert delta == 0.0
        elif 30 <= row <= 39 or 75 <= row <= 95:
            assert delta - STANDARD.fn > 0  # the window's -A_fn became a positive reward
        else:
            assert delta < 0


# --- NAB's published values ------------------------------------------------------------------


# NAB results/ARTime/realAdExchange/ARTime_exchange-3_cpc_results.csv, column S(t)_standard:
# the score a detection gets at each offset from the start of the 51-row window at rows 271-321
# (negative offsets past its end count from the end).
ARTIME_S_STANDARD = {
    0: 1.0,
    1: 0.9986127948543186,
    3: 0.995402341785459,
    26: 0.8526799504779677,
    50: 0.049644914133534834,
}
ARTIME_S_AFTER_END = {
    1: -0.005495421245366803,
    2: -0.010963479408745124,
    149: -0.10999992562366848,
    150: -0.10999993270151008,  # exactly three widths on: still the sigmoid (``> 3.0``)
    151: -0.11,
}


@pytest.mark.parametrize(("offset", "expected"), sorted(ARTIME_S_STANDARD.items()))
def test_reward_inside_a_window_matches_nab_results(offset: int, expected: float) -> None:
    windows, rows, probation = [(271, 321)], 1538, 230
    assert _raw(windows, [271 + offset], rows, probation) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize(("after", "expected"), sorted(ARTIME_S_AFTER_END.items()))
def test_false_positive_after_a_window_matches_nab_results(after: int, expected: float) -> None:
    windows, rows, probation = [(271, 321)], 1538, 230
    raw = _raw(windows, [321 + after], rows, probation)
    assert raw + STANDARD.fn == pytest.approx(expected, abs=1e-15)


def test_artime_exchange_3_cpc_file_score_matches_nab() -> None:
    # ARTime's first detection in each window of exchange-3_cpc (bench/nab_published/
    # detections.csv) and NAB's score of the file (results/ARTime/ARTime_standard_scores.csv).
    detections = pd.read_csv(PUBLISHED / "detections.csv")["Row"].tolist()
    score = score_stream([(271, 321), (413, 463), (952, 1002)], detections, 1538, 230)
    assert (score.detected, score.false_positives) == (3, 0)
    assert score.raw == pytest.approx(2.7007622427413946, abs=1e-12)


@pytest.mark.parametrize(
    ("detector", "readme"),
    [("ARTime", 78.7), ("numenta", 70.2), ("knncad", 63.2), ("twitterADVec", 56.4),
     ("randomCutForest", 48.3), ("windowedGaussian", 47.3)],
)  # fmt: skip
def test_published_per_file_scores_give_the_readme_figures(detector: str, readme: float) -> None:
    # NAB's own per-file standard scores on the 27 streams (53 windows, none in a probation),
    # normalised as NAB's runner does, give shared/data/nab-dev/README.md's NAB standard column.
    table = pd.read_csv(PUBLISHED / "standard_scores.csv")
    rows = table[table["Detector"] == detector]
    assert len(rows) == 27
    score = normalise(float(rows["Score"].sum()), -53.0, 53.0)
    assert score is not None and abs(score - readme) <= 0.05


# --- hand-computed cases ---------------------------------------------------------------------


def test_single_false_positive_before_any_window() -> None:
    assert _raw([(50, 59)], [20], 100) == pytest.approx(-0.11 - 1.0)
    assert _raw([], [20], 100) == pytest.approx(-0.11)
    assert score_stream([], [20], 100, 0).fp_cost == pytest.approx(0.11)


def test_only_the_first_detection_in_a_window_counts() -> None:
    alone = _raw([(10, 19)], [12], 40)
    assert _raw([(10, 19)], [12, 13, 19], 40) == alone
    # (12 is the window's third row of ten: position -(19 - 12 + 1) / 10 = -0.8)
    assert alone == pytest.approx(float(scaled_sigmoid(-0.8)) / MAX_TP)


def test_probation_hides_detections_and_whole_windows() -> None:
    # A window entirely in the probation is not scored at all; one straddling it is, from the
    # probation on, with its position measured over the whole window.
    inside = score_stream([(2, 5), (20, 29)], [3], 40, probation=10)
    assert (inside.windows, inside.detected, inside.raw) == (1, 0, -1.0)
    straddling = score_stream([(5, 14)], [7, 12], 40, probation=10)
    assert straddling.windows == 1
    assert straddling.raw == pytest.approx(float(scaled_sigmoid(-(14 - 12 + 1) / 10)) / MAX_TP)
    # A false positive after the probation still counts from a window that ended inside it.
    after = score_stream([(2, 5)], [6], 40, probation=6)
    assert after.windows == 0
    assert after.raw == pytest.approx(0.11 * float(scaled_sigmoid(1 / 3)))


def test_false_positive_cost_grows_with_distance() -> None:
    costs = [-_raw([(10, 19)], [10, row], 200) + 1.0 for row in range(20, 60)]
    assert np.all(np.diff(costs) >= 0) and np.all(np.diff(costs[:20]) > 0)
    assert _raw([(10, 19)], [10, 19 + 28], 200) == 1.0 - 0.11  # past 3 widths (of 10 - 1 rows)


def test_one_row_window_counts_as_two_rows_for_false_positives() -> None:
    assert _raw([(10, 10)], [10], 40) == pytest.approx(1.0)
    assert _raw([(10, 10)], [10, 11], 40) == pytest.approx(1.0 + 0.11 * float(scaled_sigmoid(1)))


def test_set_scores_perfect_100_silent_0() -> None:
    streams = [([(10, 19), (40, 44)], 60, 5), ([], 30, 3), ([(25, 29)], 30, 4)]
    perfect = score_set(
        score_stream(w, [a for a, _ in w], n, p) for w, n, p in streams
    )  # fmt: skip
    silent = score_set(score_stream(w, [], n, p) for w, n, p in streams)
    assert (perfect.score, perfect.raw, perfect.windows) == (100.0, 3.0, 3)
    assert (silent.score, silent.raw, silent.null) == (0.0, -3.0, -3.0)
    noisy = score_set(score_stream(w, [0, 1, 2, 3, 4, 5, 6], n, 0) for w, n, _ in streams)
    assert noisy.score is not None and noisy.score < 0
    assert noisy.as_dict()["nab_false_positives"] == 21


def test_set_without_windows_has_no_normalised_score() -> None:
    result = score_set([score_stream([], [3], 10, 0)])
    assert result.score is None and result.raw == pytest.approx(-0.11)
    assert normalise(1.0, 0.0, 0.0) is None
    assert normalise(8.0, 4.0, 44.0) == pytest.approx(10.0)


@given(st.lists(st.integers(0, 199), max_size=30), st.integers(0, 60))
def test_score_is_bounded(detections: list[int], probation: int) -> None:
    windows = [(70, 89), (150, 169)]
    score = score_stream(windows, detections, 200, probation)
    # At most A_tp per window; the null score less false positives at most A_fp each.
    assert score.raw <= 2.0 + 1e-12
    assert score.raw >= -2.0 - 0.11 * score.false_positives - 1e-12


# --- labels, onsets and input checks ---------------------------------------------------------


def test_windows_from_labels() -> None:
    assert windows_from_labels([0, 1, 1, 0, 0, 1]) == [(1, 2), (5, 5)]
    assert windows_from_labels([1, 1]) == [(0, 1)]
    assert windows_from_labels([]) == []
    with pytest.raises(ValueError, match="only 0 and 1"):
        windows_from_labels([0, 2])


def test_onsets() -> None:
    flags = np.array([1, 1, 0, 1, 1, 0, 0, 1, 0, 1])
    assert onsets(flags).tolist() == [0, 3, 7, 9]
    # An alarm running when scoring starts began in the probation: not an onset after it.
    assert onsets(flags, start=4).tolist() == [7, 9]
    assert onsets(np.zeros(5, dtype=bool)).tolist() == []


@pytest.mark.parametrize(
    ("windows", "detections", "probation", "message"),
    [
        ([(5, 3)], [], 0, "row ranges"),
        ([(0, 10)], [], 0, "row ranges"),
        ([(1, 4), (4, 6)], [], 0, "must not overlap"),
        ([(5, 6), (1, 2)], [], 0, "must not overlap"),
        ([], [10], 0, "detections must be row indices"),
        ([], [-1], 0, "detections must be row indices"),
        ([], [], 11, "probation 11"),
    ],
)
def test_score_stream_rejects_bad_input(
    windows: list[tuple[int, int]], detections: list[int], probation: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        score_stream(windows, detections, 10, probation)


def test_cost_matrix_rejects_signs_that_flip_meaning() -> None:
    assert CostMatrix(tp=1.0, fp=0.11, fn=1.0) == STANDARD
    with pytest.raises(ValueError, match="weights"):
        CostMatrix(tp=0.0)
    with pytest.raises(ValueError, match="weights"):
        CostMatrix(fp=-0.11)


# --- bench/quality.py's use of it ------------------------------------------------------------


def _nab_result(group: str, labels: list[int], flags: list[int], probation: int) -> dict:
    frame = pd.DataFrame({"ts": np.arange(len(labels), dtype=float), "label": labels})
    stream = Stream(f"{group}/s", frame, probation)
    record = _stream_record(stream, np.asarray(flags), nab_inputs=True)
    return {"dataset": "nab-dev", "task": stream.device_id, "group": group, "seed": 0,
            "methods": {"default": [record]}, "train_alarms": {"default": []},
            "train_devices": 1, "fits": {}}  # fmt: skip


def test_quality_scores_nab_dev_from_onsets_after_the_probation() -> None:
    # An alarm running from the probation into the window is no detection; the later onset in
    # the window is, on the window's third row of five.
    tweets = _nab_result("realTweets", [0] * 10 + [1] * 5 + [0] * 5, [0, 0, 1, 1, 1, 1]
                         + [0] * 6 + [1] + [0] * 7, probation=4)  # fmt: skip
    quiet = _nab_result("artificialNoAnomaly", [0] * 20, [0] * 20, probation=3)
    record = tweets["methods"]["default"][0]
    assert record["nab"]["detections"].tolist() == [12]
    assert record["nab"]["windows"] == [(10, 14)]
    expected = 100 * (float(scaled_sigmoid(-3 / 5)) / MAX_TP + 1) / 2
    summary = _summarise_dataset("nab-dev", [tweets, quiet], [0])
    block = summary["default"]
    assert block["nab_standard"] == pytest.approx(expected)
    assert block["subsets"]["realTweets"]["nab_standard"] == pytest.approx(expected)
    assert block["subsets"]["artificialNoAnomaly"]["nab_standard"] is None
    assert list(block["subsets"]) == ["all", "realTweets", "artificialNoAnomaly"]
    assert {"event_precision", "event_recall", "event_f1", "alarms_per_device"} <= set(block)
    table = _table({"nab-dev": summary})
    assert f"{expected:.1f} |" in table and "n/a |" in table
    # Other datasets' records carry no NAB inputs and get no NAB figures.
    frame = pd.DataFrame({"ts": [0.0, 1.0], "label": [0, 1]})
    plain = _stream_record(Stream("d", frame, 0), np.array([0, 1]))
    assert "nab" not in plain and "nab_standard" not in _pool([plain])
