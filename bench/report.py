"""What the benchmark scripts share: the code revision they ran on and the per-stream plot."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from detector.plot import plot_device

__all__ = ["plot_stream", "revision"]

ROOT = Path(__file__).resolve().parent.parent


def revision() -> dict[str, Any]:
    """The commit the benchmark ran on, and whether the working tree had changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def plot_stream(
    path: Path,
    title: str,
    labels: np.ndarray,
    scores: np.ndarray,
    thresholds: np.ndarray,
    firing: np.ndarray,
    split_row: int = 0,
    resolve_ratio: float = 1.0,
) -> None:
    """One stream as a PNG: score and threshold (log scale), labels and the device's flags.

    ``split_row`` > 0 draws where the training part ends; ``resolve_ratio`` < 1 the resolve level.
    Drawn by :func:`detector.plot.plot_device` (without the readings panel), the same picture as
    ``detector evaluate --plot``. Needs the ``plot`` extra (matplotlib).
    """
    plot_device(
        path,
        title,
        np.arange(len(labels)),
        None,
        (),
        scores,
        thresholds,
        firing,
        labels=labels,
        split_row=split_row,
        resolve_ratio=resolve_ratio,
    )
