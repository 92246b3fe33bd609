"""One device's backtest as a PNG: readings, score against its level, alarms and labels.

Used by ``detector evaluate --plot`` and the benchmarks (``bench/report.py``). matplotlib is the
optional ``plot`` extra: it is imported inside :func:`plot_device` only, so the daemon and the
rest of the package never need it; without it :class:`PlotUnavailable` says how to install it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "INSTALL_HINT",
    "MAX_SENSORS",
    "PlotUnavailable",
    "file_names",
    "plot_device",
    "require_matplotlib",
]

INSTALL_HINT = "pip install 'sensor-anomaly-detector[plot]'"
MAX_SENSORS = 8  # readings panel: more lines than this are unreadable

_LABEL_COLOUR = "tab:red"
_FIRING_COLOUR = "tab:purple"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class PlotUnavailable(ImportError):
    """matplotlib (the ``plot`` extra) is not installed."""


def require_matplotlib() -> None:
    """Raise :class:`PlotUnavailable` unless matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable(f"needs matplotlib: {INSTALL_HINT}") from None


def file_names(device_ids: Iterable[str]) -> dict[str, str]:
    """A distinct, filesystem-safe file stem per device id (``pump/7`` -> ``pump_7``).

    Anything but letters, digits, ``.``, ``_`` and ``-`` becomes ``_``; a leading dot is
    dropped; stems are at most 100 characters. Ids that would share a stem (also when only the
    case differs, for case-insensitive filesystems) get ``-2``, ``-3``, ... in order.
    """
    names: dict[str, str] = {}
    taken: set[str] = set()
    for device_id in device_ids:
        stem = _UNSAFE.sub("_", str(device_id)).lstrip(".")[:100] or "_"
        name, n = stem, 1
        while name.lower() in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name.lower())
        names[device_id] = name
    return names


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) rows of each run of True."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _spans(x: np.ndarray, mask: np.ndarray) -> list[tuple[float, float]]:
    """``(start, width)`` on the x axis of each run of True: a row lasts until the next row."""
    if len(x) == 0 or not mask.any():
        return []
    step = float(np.nanmedian(np.diff(x))) if len(x) > 1 else 1.0
    edges = np.append(x, x[-1] + (step if np.isfinite(step) and step > 0 else 1.0))
    starts, ends = _runs(mask)
    return [
        (float(edges[a]), float(edges[b] - edges[a])) for a, b in zip(starts, ends, strict=True)
    ]


def _normalised(readings: np.ndarray) -> np.ndarray:
    """Each column as a z-score (constant or empty columns centred, not scaled)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        centre = np.nanmean(readings, axis=0)
        scale = np.nanstd(readings, axis=0)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return (readings - np.nan_to_num(centre)) / scale


def plot_device(
    path: Path,
    title: str,
    x: np.ndarray,
    readings: np.ndarray | None,
    sensors: Sequence[str],
    scores: np.ndarray,
    levels: np.ndarray,
    firing: np.ndarray,
    labels: np.ndarray | None = None,
    split_row: int = 0,
    resolve_ratio: float = 1.0,
    swap_rows: Sequence[int] = (),
) -> None:
    """Draw one device's backtest into the PNG ``path`` (its folder is created).

    ``x`` is per row: timestamps as ``datetime64`` (a date axis) or numbers (row numbers, say).
    Panels, sharing the x axis:

    - the ``readings`` ``(rows, sensors)`` named by ``sensors``, each as a z-score when there are
      several so that they share one axis, the first :data:`MAX_SENSORS` of them (left out when
      ``readings`` is None);
    - the window ``scores`` and the ``levels`` (the threshold each window was judged by) on a log
      scale, the rows with a labelled anomaly and the firing rows shaded, each alarm onset (a row
      where ``firing`` goes from 0 to 1) a vertical line; ``resolve_ratio`` < 1 also draws the
      resolve level, ``split_row`` > 0 a dashed line where the training part ends, each of
      ``swap_rows`` (the first row a new model scored: a refit or a swap) a dotted green line;
    - a strip: firing, and the ``labels`` (0/1) when given.

    NaN scores and levels (rows that ended no window) are skipped, not drawn as gaps. Raises
    :class:`PlotUnavailable` without matplotlib.
    """
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    x = np.asarray(x)
    dates = np.issubdtype(x.dtype, np.datetime64)
    xs = mdates.date2num(x) if dates else x.astype(np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    levels = np.asarray(levels, dtype=np.float64)
    firing = np.asarray(firing).astype(bool)
    label_mask = None if labels is None else np.nan_to_num(np.asarray(labels, float)) > 0

    panels: list[str] = (["readings"] if readings is not None else []) + ["score", "strip"]
    ratios = {"readings": 2.6, "score": 3.0, "strip": 0.7 if label_mask is not None else 0.45}
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(12, 7.5 if readings is not None else 4.8),
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": [ratios[p] for p in panels]},
    )
    ax: dict[str, Any] = dict(zip(panels, axes[:, 0], strict=True))
    legend = {"loc": "upper left", "bbox_to_anchor": (1.005, 1.0), "fontsize": 7, "frameon": False}
    label_spans = _spans(xs, label_mask) if label_mask is not None else []
    firing_spans = _spans(xs, firing)

    def shade(axis: Any, spans: list[tuple[float, float]], colour: str, name: str) -> None:
        if spans:
            axis.broken_barh(
                spans, (0, 1), transform=axis.get_xaxis_transform(), facecolor=colour,
                alpha=0.14, linewidth=0, label=name,
            )  # fmt: skip

    if readings is not None:
        top = ax["readings"]
        values = np.asarray(readings, dtype=np.float64).reshape(len(xs), -1)
        shown = min(values.shape[1], MAX_SENSORS)
        several = values.shape[1] > 1
        drawn = _normalised(values[:, :shown]) if several else values
        shade(top, label_spans, _LABEL_COLOUR, "labelled anomaly")
        for i in range(shown):
            top.plot(xs, drawn[:, i], lw=0.7, label=str(sensors[i]))
        top.set_ylabel("reading (z-score)" if several else str(sensors[0]))
        heading = "sensors" if shown == values.shape[1] else f"first {shown} of {values.shape[1]}"
        top.legend(title=heading, title_fontsize=7, **legend)

    mid = ax["score"]
    shade(mid, label_spans, _LABEL_COLOUR, "labelled anomaly")
    shade(mid, firing_spans, _FIRING_COLOUR, "firing")
    scored = np.isfinite(scores) & (scores > 0)
    judged = np.isfinite(levels) & (levels > 0)
    mid.plot(xs[scored], scores[scored], lw=0.8, color="tab:blue", label="window score")
    mid.plot(xs[judged], levels[judged], lw=1.0, color="k", label="judged level")
    if resolve_ratio < 1:
        mid.plot(xs[judged], resolve_ratio * levels[judged], "k:", lw=1, label="resolve level")
    onsets = _runs(firing)[0]
    if len(onsets):
        mid.vlines(
            xs[onsets], 0, 1, transform=mid.get_xaxis_transform(), colors=_FIRING_COLOUR,
            lw=0.9, label=f"alarm onset ({len(onsets)})",
        )  # fmt: skip
    swaps = [row for row in swap_rows if 0 <= row < len(xs)]
    for number, row in enumerate(swaps):
        mid.axvline(
            xs[row], color="tab:green", ls=":", lw=1.2,
            label=f"model swap ({len(swaps)})" if number == 0 else None,
        )  # fmt: skip
    if scored.any() or judged.any():
        mid.set_yscale("log")
    mid.set_ylabel("score")
    mid.legend(**legend)

    strip = ax["strip"]
    rows = [("firing", firing_spans, _FIRING_COLOUR)]
    if label_mask is not None:
        rows.append(("label", label_spans, _LABEL_COLOUR))
    for i, (_, spans, colour) in enumerate(rows):
        if spans:
            strip.broken_barh(spans, (i + 0.1, 0.8), facecolor=colour, linewidth=0)
    strip.set_ylim(0, len(rows))
    strip.set_yticks([i + 0.5 for i in range(len(rows))], [name for name, _, _ in rows])
    strip.tick_params(axis="y", labelsize=8, length=0)
    strip.set_xlabel("time" if dates else "row")

    if split_row and 0 < split_row < len(xs):
        boundary = (xs[split_row - 1] + xs[split_row]) / 2
        for axis in ax.values():
            axis.axvline(boundary, color="gray", ls="--", lw=1)
    if len(xs):
        left, right = float(np.nanmin(xs)), float(np.nanmax(xs))
        if right > left:
            axes[0, 0].set_xlim(left, right)
    if dates:
        locator = mdates.AutoDateLocator()
        strip.xaxis.set_major_locator(locator)
        strip.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
