"""Synthetic IoT fleet generator for demos and tests.

Each device emits correlated sensor channels driven by a few shared latent factors (a daily-like
cycle, a slow load process and a slow ambient process). Optionally, labelled anomaly episodes are
injected so detectors can be trained on the normal part and scored on the rest. A fleet is of one
kind (:func:`generate_fleet`: pumps, eight sensors) or mixes several device profiles with their own
sensor sets and normals (:func:`generate_mixed_fleet`). Everything is deterministic from ``seed``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "ANOMALY_KINDS",
    "PROFILES",
    "PROFILE_COLUMN",
    "SENSORS",
    "AnomalyEpisode",
    "DeviceProfile",
    "Fleet",
    "generate_fleet",
    "generate_mixed_fleet",
    "split_at",
    "write_fleet",
]

ANOMALY_KINDS: tuple[str, ...] = ("spike", "drift", "stuck", "correlation_break")
# The readings column of a mixed fleet naming each row's device profile; the trainer's
# data.profile_column and the replay tool's "profile" field read it.
PROFILE_COLUMN = "profile"


@dataclass(frozen=True)
class DeviceProfile:
    """One kind of device: its sensors and how their normal behaves.

    Per sensor: nominal level (``baseline``), variation scale (``scale``, roughly the std of the
    normal signal), loadings on the latent factors (cycle, lagged cycle, load, ambient) and noise
    as a fraction of the scale. ``correlated_pairs`` are pairs with strongly positive loadings on
    the same factors; flipping one of them is invisible to per-sensor thresholds but breaks the
    joint structure a multivariate detector learns. The cycle's period is ``cycle_factor`` times
    the fleet's ``cycle_steps``; ``load_phi`` and ``load_smooth_steps`` set how fast load moves.
    """

    name: str
    sensors: tuple[str, ...]
    baseline: tuple[float, ...]
    scale: tuple[float, ...]
    loadings: tuple[tuple[float, float, float, float], ...]
    noise_frac: tuple[float, ...]
    correlated_pairs: tuple[tuple[str, str], ...]
    cycle_factor: float = 1.0
    load_phi: float = 0.99
    load_smooth_steps: int = 20


# Mechanical channels share the load loading so they move together, voltage sags under load, and
# humidity follows ambient and runs against the cycle, which is what makes the fleet multivariate.
_PUMP = DeviceProfile(
    name="pump",
    sensors=(
        "temperature",
        "pressure",
        "vibration",
        "current",
        "voltage",
        "flow_rate",
        "rpm",
        "humidity",
    ),
    baseline=(60.0, 3.0, 0.5, 12.0, 230.0, 30.0, 1500.0, 40.0),
    scale=(4.0, 0.25, 0.06, 1.5, 2.5, 3.0, 120.0, 5.0),
    loadings=(
        # cycle, cycle_lag, load, ambient
        (0.0, 0.7, 0.5, 0.3),  # temperature: follows the cycle with a lag, warms with load
        (0.3, 0.0, 0.8, 0.0),  # pressure
        (0.3, 0.0, 0.85, 0.0),  # vibration
        (0.4, 0.0, 0.85, 0.0),  # current
        (-0.3, 0.0, -0.4, 0.3),  # voltage: sags when the plant draws more current
        (0.4, 0.0, 0.8, 0.0),  # flow_rate
        (0.4, 0.0, 0.85, 0.0),  # rpm
        (-0.5, 0.0, 0.0, 0.7),  # humidity
    ),
    noise_frac=(0.04, 0.05, 0.05, 0.04, 0.05, 0.04, 0.03, 0.05),
    correlated_pairs=(
        ("current", "rpm"),
        ("flow_rate", "pressure"),
        ("vibration", "current"),
        ("rpm", "flow_rate"),
        ("current", "flow_rate"),
    ),
)
# A fan has fewer sensors, one the pump lacks (airflow), other levels for the names they share,
# a duty cycle twice as short and a load that changes faster: a pump model is wrong for it.
_FAN = DeviceProfile(
    name="fan",
    sensors=("vibration", "current", "temperature", "airflow"),
    baseline=(2.0, 4.0, 45.0, 1200.0),
    scale=(0.25, 0.5, 3.0, 150.0),
    loadings=(
        (0.4, 0.0, 0.8, 0.0),  # vibration
        (0.5, 0.0, 0.8, 0.0),  # current
        (0.0, 0.6, 0.4, 0.6),  # temperature: motor heat lags the cycle, ambient matters more
        (0.5, 0.0, 0.8, 0.0),  # airflow
    ),
    noise_frac=(0.05, 0.04, 0.04, 0.04),
    correlated_pairs=(("current", "airflow"), ("vibration", "current"), ("airflow", "vibration")),
    cycle_factor=0.5,
    load_phi=0.97,
    load_smooth_steps=10,
)
# A compressor runs hot and slow: long cycles, a sluggish load, oil pressure following load.
_COMPRESSOR = DeviceProfile(
    name="compressor",
    sensors=("temperature", "pressure", "current", "vibration", "oil_pressure"),
    baseline=(85.0, 8.0, 30.0, 1.2, 4.0),
    scale=(5.0, 0.6, 3.0, 0.15, 0.3),
    loadings=(
        (0.0, 0.6, 0.6, 0.4),  # temperature
        (0.5, 0.0, 0.8, 0.0),  # pressure
        (0.4, 0.0, 0.9, 0.0),  # current
        (0.3, 0.0, 0.85, 0.0),  # vibration
        (0.2, 0.0, 0.6, -0.3),  # oil_pressure: thinner oil when the room is warm
    ),
    noise_frac=(0.04, 0.05, 0.04, 0.05, 0.05),
    correlated_pairs=(("current", "pressure"), ("vibration", "current"), ("pressure", "vibration")),
    cycle_factor=2.0,
    load_phi=0.995,
    load_smooth_steps=30,
)
PROFILES: dict[str, DeviceProfile] = {p.name: p for p in (_PUMP, _FAN, _COMPRESSOR)}
# The sensors of a single-kind fleet (:func:`generate_fleet`), in column order.
SENSORS: tuple[str, ...] = _PUMP.sensors

_MIN_GAP_STEPS = 150
_WARMUP_FRACTION = 0.25
_EPISODE_LEN = (30, 60)
_SPIKE_LEN = (5, 10)
_SPIKE_SIGMAS = (6.0, 8.0)
_DRIFT_SIGMAS = 5.0
_STUCK_SIGMAS = 3.0
# Candidate start positions tried for a correlation break; more candidates make it likelier the
# flipped sensor sits away from its mean, where the flip is actually observable.
_CORR_BREAK_CANDIDATES = 16


@dataclass(frozen=True)
class AnomalyEpisode:
    """One injected anomaly on one device, covering ``[start_ts, end_ts]`` inclusive.

    ``sensors`` lists the disturbed sensors. For ``correlation_break`` it is
    ``(mirrored, partner)``: the first is replaced by its mirror image around its mean, the
    second is its normally co-moving partner, left untouched.
    """

    device_id: str
    kind: str
    sensors: tuple[str, ...]
    start_ts: float
    end_ts: float


@dataclass(frozen=True)
class Fleet:
    """Generated readings, row-aligned labels, and the episodes that produced the labels."""

    readings: pd.DataFrame
    labels: pd.DataFrame
    episodes: list[AnomalyEpisode]


def _smooth_process(
    rng: np.random.Generator, n_series: int, n_steps: int, phi: float, smooth_steps: int
) -> np.ndarray:
    """Unit-variance AR(1) process, further box-smoothed, shape ``(n_series, n_steps)``.

    Implemented as one FFT convolution of white noise with the truncated impulse response instead
    of a Python-level recursion; a burn-in equal to the kernel length removes start-up transients.
    """
    ar_len = math.ceil(math.log(1e-4) / math.log(phi))
    kernel = np.convolve(phi ** np.arange(ar_len), np.ones(smooth_steps))
    # Normalising the kernel energy gives a stationary output with unit variance.
    kernel /= np.sqrt(np.sum(kernel**2))
    k = kernel.size
    white = rng.standard_normal((n_series, n_steps + k - 1))
    n_fft = white.shape[1] + k - 1
    full = np.fft.irfft(np.fft.rfft(white, n_fft) * np.fft.rfft(kernel, n_fft), n_fft)
    return full[:, k - 1 : k - 1 + n_steps]


def _saturate(x: np.ndarray, limit: float = 1.5) -> np.ndarray:
    return limit * np.tanh(x / limit)


def _device_ids(n_devices: int) -> list[str]:
    # Pad to a common width so lexicographic order equals numeric order even past 1000 devices.
    width = max(3, len(str(n_devices - 1)))
    return [f"dev-{i:0{width}d}" for i in range(n_devices)]


def _normal_signals(
    rng: np.random.Generator,
    profile: DeviceProfile,
    n_devices: int,
    n_steps: int,
    cycle_steps: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(clean, observed)`` arrays of shape ``(n_devices, n_steps, n_sensors)``."""
    t = np.arange(n_steps, dtype=float)
    phase = rng.uniform(0.0, 2.0 * np.pi, size=(n_devices, 1))
    period = cycle_steps * profile.cycle_factor
    omega = 2.0 * np.pi / period
    # Temperature responds to the cycle about an eighth of a period late (thermal inertia).
    lag = period / 8.0
    cycle = np.sin(omega * t + phase)
    cycle_lag = np.sin(omega * (t - lag) + phase)
    # Real loads and ambient conditions saturate; a soft limit keeps "normal" inside an envelope
    # that a model trained on a few thousand steps can have seen.
    load = _saturate(
        _smooth_process(
            rng, n_devices, n_steps, phi=profile.load_phi, smooth_steps=profile.load_smooth_steps
        )
    )
    ambient = _saturate(_smooth_process(rng, n_devices, n_steps, phi=0.998, smooth_steps=50))
    factors = np.stack([cycle, cycle_lag, load, ambient], axis=-1)  # (dev, t, factor)

    n_sensors = len(profile.sensors)
    # Mild per-device calibration differences keep the fleet similar but not identical.
    offset = 1.0 + 0.03 * rng.standard_normal((n_devices, 1, n_sensors))
    gain = np.clip(1.0 + 0.08 * rng.standard_normal((n_devices, 1, n_sensors)), 0.8, 1.2)
    noise_mult = rng.uniform(0.8, 1.2, size=(n_devices, 1, n_sensors))

    baseline, scale = np.array(profile.baseline), np.array(profile.scale)
    clean = baseline * offset + scale * gain * (factors @ np.array(profile.loadings).T)
    noise = (
        np.array(profile.noise_frac)
        * scale
        * noise_mult
        * rng.standard_normal((n_devices, n_steps, n_sensors))
    )
    return clean, clean + noise


def _place_episodes(
    rng: np.random.Generator,
    lengths: list[int],
    n_steps: int,
    score: list[np.ndarray | None],
    quiet_steps: int,
) -> list[int]:
    """Choose start steps for consecutive episodes, honouring warm-up and minimum gaps.

    Each episode's start is drawn from the first ``1/remaining`` share of its feasible range so
    that later episodes keep room. Where ``score`` holds a per-start array, the best of several
    random candidates is used instead of a single draw.
    """
    earliest = quiet_steps
    starts: list[int] = []
    n_eps = len(lengths)
    for j, length in enumerate(lengths):
        latest = n_steps - sum(lengths[j:]) - (n_eps - 1 - j) * _MIN_GAP_STEPS
        if latest < earliest:
            raise ValueError(
                f"n_steps={n_steps} is too short for {n_eps} anomaly episodes per device "
                f"(each needs {_MIN_GAP_STEPS} normal steps between them and none may start in "
                f"the first {quiet_steps} steps)"
            )
        hi = earliest + (latest - earliest) // (n_eps - j)
        scores = score[j]
        if scores is None:
            start = int(rng.integers(earliest, hi + 1))
        else:
            cands = rng.integers(earliest, hi + 1, size=_CORR_BREAK_CANDIDATES)
            start = int(cands[np.argmax(scores[cands])])
        starts.append(start)
        earliest = start + length + _MIN_GAP_STEPS
    return starts


def _window_mean(x: np.ndarray, length: int) -> np.ndarray:
    """Mean of ``x[s:s + length]`` for every valid start ``s``; out-of-range starts get -inf."""
    csum = np.concatenate([[0.0], np.cumsum(x)])
    out = np.full(x.size, -np.inf)
    n_valid = x.size - length + 1
    if n_valid > 0:
        out[:n_valid] = (csum[length:] - csum[:n_valid]) / length
    return out


def _inject_device(
    rng: np.random.Generator,
    profile: DeviceProfile,
    device: int,
    n_episodes: int,
    clean: np.ndarray,
    observed: np.ndarray,
    quiet_steps: int,
) -> list[tuple[str, tuple[int, ...], int, int]]:
    """Inject episodes into ``observed[device]`` in place; return ``(kind, sensors, s, e)``."""
    n_steps, n_sensors = observed.shape[1:]
    x = observed[device]
    c = clean[device]
    # Statistics of the untouched signal define "normal" for the magnitudes below.
    mu = x.mean(axis=0)
    sigma = x.std(axis=0)
    sensor_index = {name: i for i, name in enumerate(profile.sensors)}
    pairs = profile.correlated_pairs

    kinds = [ANOMALY_KINDS[(device + j) % len(ANOMALY_KINDS)] for j in range(n_episodes)]
    lengths: list[int] = []
    chosen: list[tuple[int, ...]] = []
    scores: list[np.ndarray | None] = []
    for kind in kinds:
        lo, hi = _SPIKE_LEN if kind == "spike" else _EPISODE_LEN
        length = int(rng.integers(lo, hi + 1))
        lengths.append(length)
        if kind == "correlation_break":
            a, b = pairs[int(rng.integers(len(pairs)))]
            # Mirror whichever of the pair the rng picks; the other keeps behaving normally.
            pair = (sensor_index[a], sensor_index[b])
            flipped = pair[int(rng.integers(2))]
            chosen.append((flipped, pair[0] if flipped == pair[1] else pair[1]))
            z_abs = np.abs(c[:, flipped] - mu[flipped]) / sigma[flipped]
            scores.append(_window_mean(z_abs, length))
        else:
            n_disturbed = 1 if kind == "stuck" else int(rng.integers(1, 3))
            picked = rng.choice(n_sensors, size=n_disturbed, replace=False)
            chosen.append(tuple(int(i) for i in picked))
            scores.append(None)

    starts = _place_episodes(rng, lengths, n_steps, scores, quiet_steps)

    out: list[tuple[str, tuple[int, ...], int, int]] = []
    for kind, sensors, start, length in zip(kinds, chosen, starts, lengths, strict=True):
        stop = start + length
        idx = list(sensors)
        if kind in ("spike", "drift"):
            # Lift from the mean when the signal is currently low, so the excursion always clears
            # the normal envelope by the stated number of sigmas instead of landing inside it.
            lift = np.maximum(0.0, mu[idx] - c[start:stop, idx].min(axis=0))
            if kind == "spike":
                k = rng.uniform(*_SPIKE_SIGMAS, size=len(idx))
                x[start:stop, idx] += k * sigma[idx] + lift
            else:
                ramp = (np.arange(1, length + 1) / length)[:, None]
                x[start:stop, idx] += ramp * (_DRIFT_SIGMAS * sigma[idx] + lift)
        elif kind == "stuck":
            s = idx[0]
            # Offset away from the mean so the frozen value sits outside the usual range.
            direction = 1.0 if c[start, s] >= mu[s] else -1.0
            x[start:stop, s] = x[start, s] + direction * _STUCK_SIGMAS * sigma[s]
        else:
            s = idx[0]
            noise = x[start:stop, s] - c[start:stop, s]
            x[start:stop, s] = 2.0 * mu[s] - c[start:stop, s] + noise
        out.append((kind, sensors, start, stop - 1))
    return out


@dataclass(frozen=True)
class _Devices:
    """Simulated devices of one profile, arrays shaped ``(device, step[, sensor])``."""

    observed: np.ndarray
    anomaly: np.ndarray
    kind: np.ndarray
    episodes: list[AnomalyEpisode]


def _check_sizes(
    n_devices: int, n_steps: int, anomalies_per_device: int, cycle_steps: int, period_s: float
) -> None:
    if n_devices < 1 or n_steps < 1:
        raise ValueError("n_devices and n_steps must be at least 1")
    if anomalies_per_device < 0:
        raise ValueError("anomalies_per_device must be non-negative")
    if cycle_steps < 2:
        raise ValueError("cycle_steps must be at least 2")
    if not period_s > 0:
        raise ValueError("period_s must be positive")


def _simulate(
    rng: np.random.Generator,
    profile: DeviceProfile,
    ids: list[str],
    ts: np.ndarray,
    anomalies_per_device: int,
    cycle_steps: int,
    quiet_steps: int,
) -> _Devices:
    """Normal signals of ``ids`` with their anomaly episodes injected and labelled."""
    n_devices, n_steps = len(ids), ts.size
    clean, observed = _normal_signals(rng, profile, n_devices, n_steps, cycle_steps)
    anomaly = np.zeros((n_devices, n_steps), dtype=np.int64)
    kind_grid = np.full((n_devices, n_steps), "", dtype=object)
    episodes: list[AnomalyEpisode] = []
    if anomalies_per_device > 0:
        for d in range(n_devices):
            for kind, sensors, s, e in _inject_device(
                rng, profile, d, anomalies_per_device, clean, observed, quiet_steps
            ):
                anomaly[d, s : e + 1] = 1
                kind_grid[d, s : e + 1] = kind
                episodes.append(
                    AnomalyEpisode(
                        device_id=ids[d],
                        kind=kind,
                        sensors=tuple(profile.sensors[i] for i in sensors),
                        start_ts=float(ts[s]),
                        end_ts=float(ts[e]),
                    )
                )

    # Physical floor: none of these quantities can be negative, whatever an anomaly did.
    np.maximum(observed, 0.0, out=observed)
    return _Devices(observed, anomaly, kind_grid, episodes)


def _fleet(
    ts: np.ndarray,
    ids: list[str],
    sensors: Sequence[str],
    values: np.ndarray,
    anomaly: np.ndarray,
    kind_grid: np.ndarray,
    episodes: list[AnomalyEpisode],
    profiles: Sequence[str] | None = None,
) -> Fleet:
    """Tables from device-major arrays; ``profiles`` (one per device) adds the profile column."""
    n_devices, n_steps = anomaly.shape
    # Time-major layout gives the streaming order (all devices at ts0, then ts1, ...).
    ts_col = np.repeat(ts, n_devices)
    dev_col = np.tile(np.array(ids, dtype=object), n_steps)
    columns: dict[str, np.ndarray] = {"ts": ts_col, "device_id": dev_col}
    if profiles is not None:
        columns[PROFILE_COLUMN] = np.tile(np.array(profiles, dtype=object), n_steps)
    flat = values.transpose(1, 0, 2).reshape(-1, len(sensors))
    readings = pd.concat([pd.DataFrame(columns), pd.DataFrame(flat, columns=list(sensors))], axis=1)
    labels = pd.DataFrame(
        {
            "ts": ts_col,
            "device_id": dev_col,
            "anomaly": anomaly.T.reshape(-1),
            "kind": kind_grid.T.reshape(-1),
        }
    )
    return Fleet(readings=readings, labels=labels, episodes=episodes)


def generate_fleet(
    n_devices: int = 4,
    n_steps: int = 2000,
    *,
    seed: int = 0,
    anomalies_per_device: int = 0,
    start_ts: float = 1_700_000_000.0,
    period_s: float = 1.0,
    cycle_steps: int = 240,
    quiet_steps: int | None = None,
) -> Fleet:
    """Generate a deterministic synthetic fleet of correlated multi-sensor devices.

    Args:
        n_devices: Number of devices, named ``dev-000``, ``dev-001``, ...
        n_steps: Readings per device; all devices share the same timestamps.
        seed: Seed for ``numpy.random.default_rng``; equal seeds give identical fleets.
        anomalies_per_device: Non-overlapping anomaly episodes injected per device. Device ``i``'s
            ``j``-th episode has kind ``ANOMALY_KINDS[(i + j) % 4]``, so every kind appears when
            ``n_devices >= 4`` or ``anomalies_per_device >= 4``.
        start_ts: Epoch seconds of the first reading.
        period_s: Seconds between consecutive readings of a device.
        cycle_steps: Period of the daily-like cycle, in steps.
        quiet_steps: No episode starts in the first ``quiet_steps`` steps (default: 25%), so
            that part can serve as normal training data for the rest (see :func:`split_at`).

    Returns:
        A :class:`Fleet`. ``readings`` has columns ``ts``, ``device_id`` and one float column per
        sensor in ``SENSORS`` order, sorted by ``ts`` then ``device_id``. ``labels`` has columns
        ``ts``, ``device_id``, ``anomaly`` (0/1) and ``kind`` (``""`` when normal), row-aligned
        with ``readings``.

    Raises:
        ValueError: On non-positive sizes, or when ``n_steps`` cannot fit the requested episodes
            after the first 25% with at least 150 normal steps between episodes.
    """
    _check_sizes(n_devices, n_steps, anomalies_per_device, cycle_steps, period_s)
    quiet = math.ceil(_WARMUP_FRACTION * n_steps) if quiet_steps is None else quiet_steps
    ids = _device_ids(n_devices)
    ts = start_ts + np.arange(n_steps, dtype=float) * period_s
    rng = np.random.default_rng(seed)
    sim = _simulate(rng, _PUMP, ids, ts, anomalies_per_device, cycle_steps, quiet)
    return _fleet(ts, ids, SENSORS, sim.observed, sim.anomaly, sim.kind, sim.episodes)


def generate_mixed_fleet(
    devices_per_profile: int = 2,
    n_steps: int = 2000,
    *,
    profiles: Sequence[str] = ("pump", "fan"),
    seed: int = 0,
    anomalies_per_device: int = 0,
    start_ts: float = 1_700_000_000.0,
    period_s: float = 1.0,
    cycle_steps: int = 240,
    quiet_steps: int | None = None,
) -> Fleet:
    """Generate a deterministic fleet of several device profiles (see :data:`PROFILES`).

    Every profile's devices are simulated and disturbed as in :func:`generate_fleet`, with that
    profile's sensors and normal; a profile's devices depend only on ``seed`` and its name, not on
    which other profiles are in the fleet.

    Args:
        devices_per_profile: Devices of each profile, named ``<profile>-0``, ``<profile>-1``, ...
        n_steps: Readings per device; all devices share the same timestamps.
        profiles: Names in :data:`PROFILES`, e.g. ``("pump", "fan", "compressor")``.
        seed: Equal seeds give identical fleets.
        anomalies_per_device: As in :func:`generate_fleet`, with ``i`` the device's number within
            its profile, so every profile gets every kind under the same conditions.
        start_ts: Epoch seconds of the first reading.
        period_s: Seconds between consecutive readings of a device.
        cycle_steps: Period of the pump's daily-like cycle, in steps; other profiles scale it by
            their ``cycle_factor``.
        quiet_steps: No episode starts in the first ``quiet_steps`` steps (default: 25%).

    Returns:
        A :class:`Fleet`. ``readings`` has columns ``ts``, ``device_id``, ``profile`` and one float
        column per sensor of any profile (the first profile's in its order, then each later
        profile's new ones), NaN where the row's profile lacks the sensor. Rows are in time order;
        within a timestamp, profiles in ``profiles`` order, devices by number. ``labels`` is as in
        :func:`generate_fleet`.

    Raises:
        ValueError: On an unknown or repeated profile, on non-positive sizes, or when ``n_steps``
            cannot fit the requested episodes.
    """
    unknown = [name for name in profiles if name not in PROFILES]
    if unknown or not profiles:
        raise ValueError(f"profiles must be some of {sorted(PROFILES)}, got {list(profiles)}")
    if len(set(profiles)) != len(profiles):
        raise ValueError(f"profiles repeat: {list(profiles)}")
    _check_sizes(devices_per_profile, n_steps, anomalies_per_device, cycle_steps, period_s)
    quiet = math.ceil(_WARMUP_FRACTION * n_steps) if quiet_steps is None else quiet_steps
    ts = start_ts + np.arange(n_steps, dtype=float) * period_s
    kinds = [PROFILES[name] for name in profiles]
    sensors = list(dict.fromkeys(s for kind in kinds for s in kind.sensors))
    column = {name: i for i, name in enumerate(sensors)}

    ids: list[str] = []
    parts: list[_Devices] = []
    values = np.full((devices_per_profile * len(kinds), n_steps, len(sensors)), np.nan)
    for k, kind in enumerate(kinds):
        # Seeding by name keeps a profile's devices the same whatever else is in the fleet.
        rng = np.random.default_rng([seed, *kind.name.encode()])
        names = [f"{kind.name}-{i}" for i in range(devices_per_profile)]
        part = _simulate(rng, kind, names, ts, anomalies_per_device, cycle_steps, quiet)
        rows = slice(k * devices_per_profile, (k + 1) * devices_per_profile)
        values[rows, :, [column[s] for s in kind.sensors]] = part.observed
        ids += names
        parts.append(part)
    return _fleet(
        ts,
        ids,
        sensors,
        values,
        np.concatenate([p.anomaly for p in parts]),
        np.concatenate([p.kind for p in parts]),
        [e for p in parts for e in p.episodes],
        profiles=[kind.name for kind in kinds for _ in range(devices_per_profile)],
    )


def split_at(fleet: Fleet, step: int, period_s: float = 1.0) -> tuple[Fleet, Fleet]:
    """Split a fleet in time before ``step``: (the first ``step`` steps, the rest).

    With ``quiet_steps >= step`` the first part is anomaly-free training data for the same devices
    the second part streams, which is how the demo trains and then detects.
    """
    cut = float(fleet.readings["ts"].min()) + step * period_s
    early = (fleet.readings["ts"] < cut).to_numpy()

    def part(mask: np.ndarray, keep: Callable[[AnomalyEpisode], bool]) -> Fleet:
        return Fleet(
            readings=fleet.readings[mask].reset_index(drop=True),
            labels=fleet.labels[mask].reset_index(drop=True),
            episodes=[e for e in fleet.episodes if keep(e)],
        )

    return part(early, lambda e: e.end_ts < cut), part(~early, lambda e: e.start_ts >= cut)


def write_fleet(fleet: Fleet, out_dir: Path, name: str) -> dict[str, Path]:
    """Write a fleet as ``{name}.csv``, ``{name}_labels.csv`` and ``{name}_episodes.json``.

    ``out_dir`` is created if needed. Floats are written at full precision so a
    ``pandas.read_csv`` round trip is lossless; read the labels with ``keep_default_na=False`` to
    get the empty ``kind`` of normal rows back as ``""`` rather than NaN.

    Returns:
        The written paths under keys ``"readings"``, ``"labels"`` and ``"episodes"``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "readings": out_dir / f"{name}.csv",
        "labels": out_dir / f"{name}_labels.csv",
        "episodes": out_dir / f"{name}_episodes.json",
    }
    fleet.readings.to_csv(paths["readings"], index=False)
    fleet.labels.to_csv(paths["labels"], index=False)
    payload = [{**asdict(ep), "sensors": list(ep.sensors)} for ep in fleet.episodes]
    paths["episodes"].write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return paths
