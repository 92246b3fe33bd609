"""bench.baselines.PCABaseline on correlated Gaussian data: false alarms, detection, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.baselines import PCABaseline

SENSORS = 10
LATENT = 3


class Plant:
    """Ten sensors driven by three latent factors plus small independent noise."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.loadings = self.rng.normal(size=(LATENT, SENSORS))
        self.offset = self.rng.uniform(-50, 50, size=SENSORS)

    def normal(self, n: int, latent_scale: float = 1.0) -> np.ndarray:
        latent = latent_scale * self.rng.normal(size=(n, LATENT))
        return latent @ self.loadings + 0.2 * self.rng.normal(size=(n, SENSORS)) + self.offset


@pytest.fixture(scope="module")
def plant() -> Plant:
    return Plant()


@pytest.fixture(scope="module")
def model(plant: Plant) -> tuple[PCABaseline, np.ndarray]:
    train = plant.normal(5000)
    return PCABaseline.fit(train), train


def test_keeps_the_latent_dimension(model: tuple[PCABaseline, np.ndarray]) -> None:
    baseline, _ = model
    assert baseline.n_components == LATENT
    assert baseline.components.shape == (SENSORS, LATENT)
    assert baseline.residual.shape == (SENSORS, SENSORS - LATENT)


@pytest.mark.parametrize(("rule", "upper"), [("t2+q", 0.03), ("q", 0.02)])
def test_false_alarm_rate_on_fresh_normal_data_is_near_nominal(
    plant: Plant, model: tuple[PCABaseline, np.ndarray], rule: str, upper: float
) -> None:
    baseline, _ = model
    rate = baseline.flags(plant.normal(20000), rule=rule).mean()
    # Each limit is a 0.99 quantile, so each statistic alone alarms on about 1 % of normal rows;
    # the union of two can reach 2 %.
    assert 0.003 < rate < upper


def test_limits_are_quantiles_of_the_held_out_tail(
    model: tuple[PCABaseline, np.ndarray],
) -> None:
    baseline, train = model
    fitting, validation = train[:4000], train[4000:]
    np.testing.assert_allclose(baseline.mean, fitting.mean(axis=0))
    np.testing.assert_allclose(baseline.scale, fitting.std(axis=0))
    t2, q = baseline.scores(validation)
    assert baseline.t2_limit == pytest.approx(np.quantile(t2, 0.99))
    assert baseline.q_limit == pytest.approx(np.quantile(q, 0.99))


def test_shifted_sensor_is_flagged(plant: Plant, model: tuple[PCABaseline, np.ndarray]) -> None:
    baseline, train = model
    block = plant.normal(500)
    block[:, 0] += 5 * train[:, 0].std()
    assert baseline.flags(block).mean() > 0.95


def test_decorrelated_block_is_flagged_by_q(
    plant: Plant, model: tuple[PCABaseline, np.ndarray]
) -> None:
    baseline, train = model
    # Same per-sensor mean and spread as normal, but the sensors no longer move together.
    block = plant.rng.normal(size=(500, SENSORS)) * train.std(axis=0) + train.mean(axis=0)
    assert baseline.flags(block, rule="q").mean() > 0.9


def test_t2_catches_what_q_cannot(plant: Plant, model: tuple[PCABaseline, np.ndarray]) -> None:
    baseline, _ = model
    # Latent factors far outside their normal range keep the correlation structure: Q stays
    # normal, only T² sees it, so the two rules differ.
    block = plant.normal(500, latent_scale=4.0)
    assert baseline.flags(block, rule="q").mean() < 0.05
    assert baseline.flags(block, rule="t2+q").mean() > 0.7


def test_constant_sensors_give_finite_scores(plant: Plant) -> None:
    def with_constants(values: np.ndarray) -> np.ndarray:
        return np.column_stack([values, np.full(len(values), 3.0), np.zeros(len(values))])

    baseline = PCABaseline.fit(with_constants(plant.normal(3000)))
    fresh = with_constants(plant.normal(5000))
    t2, q = baseline.scores(fresh)
    assert np.isfinite(t2).all() and np.isfinite(q).all()
    assert np.isfinite([baseline.t2_limit, baseline.q_limit]).all()
    assert baseline.flags(fresh).mean() < 0.03
    # A sensor that never moved moving far now is flagged (its scale is 1, so 5 units is far).
    fresh[:, SENSORS] += 5.0
    assert baseline.flags(fresh).mean() > 0.95


def test_all_constant_training_data() -> None:
    baseline = PCABaseline.fit(np.full((50, 3), 7.0))
    assert baseline.n_components == 0
    t2, q = baseline.scores(np.full((4, 3), 7.0))
    assert np.all(t2 == 0) and np.all(q == 0)
    assert not baseline.flags(np.full((4, 3), 7.0)).any()
    assert baseline.flags(np.full((4, 3), 7.0) + np.eye(4, 3)).tolist() == [True, True, True, False]


def test_one_sensor_is_a_z_score_test() -> None:
    # One sensor (the NAB streams): one component, no residual, so T² is the squared z-score
    # (over the component's variance, n / (n - 1)) and its limit the held-out quantile; Q is
    # always 0 and never flags.
    rng = np.random.default_rng(0)
    train = 10.0 + 2.0 * rng.normal(size=(600, 1))
    baseline = PCABaseline.fit(train)
    assert baseline.n_components == 1 and baseline.q_limit == 0.0
    assert baseline.eigenvalues[0] == pytest.approx(480 / 479)  # the 480 fitting rows
    t2, q = baseline.scores(np.array([[10.0], [20.0]]))
    z = (20.0 - baseline.mean[0]) / baseline.scale[0]
    assert np.all(q == 0) and t2[1] == pytest.approx(z**2 * 479 / 480)
    assert baseline.flags(np.array([[10.0], [30.0], [-10.0]])).tolist() == [False, True, True]
    # (The limit is the 0.99 quantile of only 120 held-out rows, so the rate is near, not at, 1 %.)
    assert baseline.flags(10.0 + 2.0 * rng.normal(size=(20000, 1))).mean() < 0.1
    # A flat sensor: everything is residual, and any move off the flat line is flagged.
    flat = PCABaseline.fit(np.full((100, 1), 3.0))
    assert flat.flags(np.array([[3.0], [3.5]])).tolist() == [False, True]


def test_keeping_every_component_leaves_no_q(plant: Plant) -> None:
    baseline = PCABaseline.fit(plant.normal(2000), variance=1.0)
    assert baseline.n_components == SENSORS
    _, q = baseline.scores(plant.normal(100))
    assert np.all(q == 0)
    assert baseline.q_limit == 0 and not baseline.flags(plant.normal(100), rule="q").any()


def test_lower_confidence_alarms_more(plant: Plant) -> None:
    train, fresh = plant.normal(5000), plant.normal(10000)
    strict = PCABaseline.fit(train, confidence=0.99).flags(fresh).mean()
    loose = PCABaseline.fit(train, confidence=0.9).flags(fresh).mean()
    assert loose > 3 * strict and 0.1 < loose < 0.25


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(20, 200),
    sensors=st.integers(1, 6),
    gains=st.lists(st.floats(0.01, 100), min_size=6, max_size=6),
    shifts=st.lists(st.floats(-100, 100), min_size=6, max_size=6),
)
def test_scores_do_not_depend_on_sensor_units(
    seed: int, rows: int, sensors: int, gains: list[float], shifts: list[float]
) -> None:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(sensors, sensors))
    train = rng.normal(size=(rows, sensors)) @ mixing
    fresh = rng.normal(size=(30, sensors)) @ mixing
    gain, shift = np.array(gains[:sensors]), np.array(shifts[:sensors])
    plain = PCABaseline.fit(train)
    rescaled = PCABaseline.fit(train * gain + shift)
    assert plain.n_components == rescaled.n_components
    for a, b in zip(plain.scores(fresh), rescaled.scores(fresh * gain + shift), strict=True):
        assert np.all(a >= 0) and np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"variance": 0.0}, "variance"),
        ({"variance": 1.5}, "variance"),
        ({"confidence": 1.0}, "confidence"),
        ({"validation_fraction": 0.0}, "validation_fraction"),
        ({"validation_fraction": 0.99}, "rows give"),
    ],
)
def test_fit_rejects_bad_parameters(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PCABaseline.fit(np.random.default_rng(0).normal(size=(20, 3)), **kwargs)


def test_rejects_bad_values_and_rules(model: tuple[PCABaseline, np.ndarray]) -> None:
    baseline, _ = model
    with pytest.raises(ValueError, match="2-D"):
        PCABaseline.fit(np.zeros(10))
    with pytest.raises(ValueError, match="NaN"):
        PCABaseline.fit(np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="fitted on 10"):
        baseline.scores(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="rule"):
        baseline.flags(np.zeros((3, SENSORS)), rule="t2")  # type: ignore[arg-type]
