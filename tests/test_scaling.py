"""StandardScaler: the per-sensor standardisation stored in the model artifact."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from detector.core.scaling import StandardScaler

_values = st.integers(1, 40).flatmap(
    lambda n: st.integers(1, 5).flatmap(
        lambda f: arrays(np.float64, (n, f), elements=st.floats(-1e4, 1e4, allow_nan=False))
    )
)


def test_fit_gives_mean_and_population_std() -> None:
    values = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0]])
    scaler = StandardScaler.fit(values)
    np.testing.assert_allclose(scaler.mean, [3.0, 30.0])
    np.testing.assert_allclose(scaler.scale, [np.sqrt(8 / 3), 10 * np.sqrt(8 / 3)])


def test_transform_standardises_training_data() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal([5.0, -100.0, 0.0], [2.0, 30.0, 0.01], size=(500, 3))
    scaled = StandardScaler.fit(values).transform(values)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(scaled.std(axis=0), 1.0, atol=1e-5)


def test_transform_applies_to_windows_on_last_axis() -> None:
    scaler = StandardScaler(mean=np.array([1.0, 2.0]), scale=np.array([2.0, 4.0]))
    windows = np.array([[[1.0, 2.0], [3.0, 6.0]]])  # (1, 2, 2)
    np.testing.assert_allclose(scaler.transform(windows), [[[0.0, 0.0], [1.0, 1.0]]])


@settings(max_examples=100, deadline=None)
@given(values=_values)
def test_inverse_transform_round_trips(values: np.ndarray) -> None:
    scaler = StandardScaler.fit(values)
    restored = scaler.inverse_transform(scaler.transform(values))
    # transform yields float32, so allow float32 rounding relative to the magnitudes involved.
    tolerance = 1e-6 * (np.abs(values).max() + np.abs(scaler.mean).max() + 1.0) * 4
    np.testing.assert_allclose(restored, values, rtol=0, atol=tolerance)


def test_constant_column_gets_unit_scale() -> None:
    values = np.array([[7.0, 1.0], [7.0, 2.0], [7.0, 3.0]])
    scaler = StandardScaler.fit(values)
    assert scaler.scale[0] == 1.0
    with np.errstate(all="raise"):  # no division by zero, no inf/NaN
        scaled = scaler.transform(np.array([[7.0, 2.0], [8.5, 2.0]]))
    np.testing.assert_allclose(scaled[:, 0], [0.0, 1.5])
    assert np.isfinite(scaled).all()


def test_single_row_fit_is_usable() -> None:
    scaler = StandardScaler.fit(np.array([[3.0, -1.0]]))
    np.testing.assert_array_equal(scaler.scale, [1.0, 1.0])
    np.testing.assert_allclose(scaler.transform(np.array([[4.0, 0.0]])), [[1.0, 1.0]])


@given(values=_values)
def test_dict_round_trip_survives_json(values: np.ndarray) -> None:
    scaler = StandardScaler.fit(values)
    restored = StandardScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    np.testing.assert_array_equal(restored.mean, scaler.mean)
    np.testing.assert_array_equal(restored.scale, scaler.scale)
    assert restored.mean.dtype == np.float64


@pytest.mark.parametrize("shape", [(0, 3), (5,), (2, 3, 4), ()])
def test_fit_rejects_bad_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="non-empty 2-D"):
        StandardScaler.fit(np.zeros(shape))


def test_robust_fit_ignores_spikes_in_the_training_rows() -> None:
    rng = np.random.default_rng(0)
    clean = rng.normal(10.0, 2.0, size=(2000, 1))
    spiky = clean.copy()
    spiky[::50] = 1e4  # 2 % of the rows
    robust = StandardScaler.fit(spiky, robust=True)
    assert abs(robust.mean[0] - 10.0) < 0.3
    assert 1.7 < robust.scale[0] < 2.4
    assert StandardScaler.fit(spiky).scale[0] > 500  # what the mean/std fit makes of them


def test_robust_fit_of_a_mostly_flat_sensor_falls_back_to_its_std() -> None:
    values = np.zeros((100, 1))
    values[::10] = 1.0
    scaler = StandardScaler.fit(values, robust=True)
    assert scaler.scale[0] == pytest.approx(values.std())
