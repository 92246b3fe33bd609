"""What the benchmark scripts share: the code revision they ran on and the per-stream plot."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np

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
    Needs the ``plot`` extra (matplotlib).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = np.arange(len(labels))
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 4.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.fill_between(rows, 0, 1, where=labels > 0, transform=top.get_xaxis_transform(),
                     color="tab:red", alpha=0.15, label="labelled anomaly")  # fmt: skip
    top.semilogy(rows, scores, lw=0.8, label="window score")
    top.semilogy(rows, thresholds, color="k", lw=1, label="threshold (adapted)")
    if resolve_ratio < 1:
        top.semilogy(rows, resolve_ratio * thresholds, "k:", lw=1, label="resolve level")
    if split_row:
        top.axvline(split_row - 0.5, color="gray", ls="--", lw=1)
    top.set_ylabel("score")
    top.legend(loc="upper left", fontsize=7, ncol=4)
    top.set_title(title, fontsize=9)
    bottom.step(rows, labels, where="post", color="tab:red", lw=1, label="label")
    bottom.step(rows, firing * 0.9, where="post", color="tab:blue", lw=1, label="flag (firing)")
    bottom.set_yticks([0, 1])
    bottom.set_xlabel("row")
    bottom.legend(loc="upper left", fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
