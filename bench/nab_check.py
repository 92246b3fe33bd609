"""Check bench/nab.py against NAB's published results on the 27-stream development set.

Three checks, each printed with the figures it compares:

1. NAB standard per published detector: NAB's own per-file raw scores
   (``bench/nab_published/standard_scores.csv``) summed over the 27 streams and normalised with
   :func:`bench.nab.normalise`, null and perfect scores from the windows of
   ``shared/data/nab-dev``, against the README's published column (must agree within 0.5).
2. One file from detection rows: ARTime's first detection in each window of
   ``realAdExchange/exchange-3_cpc_results.csv`` (``detections.csv``) scored by
   :func:`bench.nab.score_stream`, against NAB's own score of that file.
3. The scale: no detection scores 0, a detection on the first row of every window 100.

The README's event columns cannot be checked: they need the detectors' full result files, which
are not stored here (``bench/nab_published/README.md``).

Usage: ``python bench/nab_check.py [--data ../shared/data/nab-dev]``; exit status 1 when a check
fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.datasets import load_nab
from bench.nab import STANDARD, normalise, score_set, score_stream, windows_from_labels

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = ROOT / "bench" / "nab_published"
TOLERANCE = 0.5
# The README's "NAB standard" column for these 27 streams (shared/data/nab-dev/README.md).
README_NAB_STANDARD: dict[str, tuple[str, float]] = {
    "ARTime": ("ARTime", 78.7),
    "numenta": ("Numenta HTM", 70.2),
    "knncad": ("KNN CAD", 63.2),
    "twitterADVec": ("Twitter ADVec", 56.4),
    "randomCutForest": ("Random Cut Forest", 48.3),
    "windowedGaussian": ("Windowed Gaussian", 47.3),
}


def main(argv: list[str] | None = None) -> int:
    """Run the checks, print them, return 0 when all pass."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared" / "data" / "nab-dev",
        help="the NAB development set (combined_windows.json, data/)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        dataset = load_nab(args.data)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    streams = {t.name + ".csv": t.streams[0] for t in dataset.tasks}
    windows = {k: windows_from_labels(s.frame["label"].to_numpy()) for k, s in streams.items()}
    failed = 0

    def stream_score(key: str, detections: list[int]) -> float:
        stream = streams[key]
        return score_stream(windows[key], detections, len(stream.frame), stream.scored_from).raw

    # 3. The scale (first, so a broken loader shows before the published figures).
    silent = score_set(
        score_stream(windows[k], [], len(s.frame), s.scored_from) for k, s in streams.items()
    )
    perfect = score_set(
        score_stream(windows[k], [a for a, _ in windows[k]], len(s.frame), s.scored_from)
        for k, s in streams.items()
    )
    print(
        f"{len(streams)} streams, {silent.windows} windows: no detection {silent.score:.1f}, "
        f"every window hit at its start {perfect.score:.1f}"
    )
    if silent.score != 0.0 or perfect.score != 100.0:
        failed += 1

    # 1. NAB standard from NAB's per-file scores.
    table = pd.read_csv(PUBLISHED / "standard_scores.csv")
    print("\n| detector | files | NAB raw | NAB standard (ours) | README | difference |")
    print("|---|---|---|---|---|---|")
    for detector, (label, published) in README_NAB_STANDARD.items():
        rows = table[table["Detector"] == detector]
        missing = sorted(set(streams) - set(rows["File"]))
        if missing:
            print(f"| {label} | {len(rows)} | missing {missing} | | {published:.1f} | |")
            failed += 1
            continue
        raw = float(rows["Score"].sum())
        score = normalise(raw, -STANDARD.fn * silent.windows, STANDARD.tp * silent.windows)
        assert score is not None
        ok = abs(score - published) <= TOLERANCE
        failed += not ok
        print(
            f"| {label} | {len(rows)} | {raw:.4f} | {score:.2f} | {published:.1f} | "
            f"{score - published:+.2f}{'' if ok else ' FAIL'} |"
        )

    # 2. One file scored from its detection rows.
    detections = pd.read_csv(PUBLISHED / "detections.csv")
    print()
    for (detector, key), rows in detections.groupby(["Detector", "File"]):
        ours = stream_score(key, [int(r) for r in rows["Row"]])
        nab_rows = table[(table["Detector"] == detector) & (table["File"] == key)]
        theirs = float(nab_rows["Score"].iloc[0])
        ok = bool(np.isclose(ours, theirs, rtol=0, atol=1e-9))
        failed += not ok
        print(
            f"{detector} {key}, detections on rows {list(rows['Row'])}: "
            f"score {ours!r}, NAB {theirs!r}{'' if ok else ' FAIL'}"
        )
    print(f"\n{'all checks pass' if not failed else f'{failed} check(s) failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
