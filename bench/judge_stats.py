"""The judge's per-window cost with incremental order statistics, against the partitions before.

Times :meth:`Judge.judge` per call with adaptation, the likelihood, or both on (``windows``
1000 each, every device's history full), for the judge of this tree ("after") and for the one
at ``--before`` ("before": its ``recent``, ``adaptation``, ``likelihood`` and ``judge`` modules
loaded from git under another package name; alerts, calibration and the artifact are this
tree's), on the same score stream. Repeats alternate before and after, so the ratios compare
runs on the same machine state; the thresholds of both are checked equal, call by call.

Then (``batch``) this tree's judge window by window, as the judge stage called it before (a
:meth:`Judge.judge` and a :meth:`Judge.firing` per window), against :meth:`Judge.judge_many` on
batches of ``--batch`` windows of ``--batch-devices`` devices drawn at random, from the same
warmed-up state; repeats alternate the two, thresholds, transitions and firing flags compared.

Writes ``bench/results/judge_stats.json``. Usage: ``python bench/judge_stats.py [--repeats 5]
[--parts stats,batch]``.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from detector.core.alerts import AlertRule

__all__ = ["main", "measure", "measure_batch"]

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "judge_stats.json"
# The last revision whose adaptation and likelihood partitioned the recent scores every window.
BEFORE = "a7a5c112cfd0592e454e945e1eb6a0065abfe1ae"
_MODULES = ("recent", "adaptation", "likelihood", "judge")
_OLD_PACKAGE = "judge_before"
# "none": the judge with neither, the per-call floor the statistics add to. "calm": the
# likelihood learning only calm windows, judged window by window even in judge_many.
CONFIGS = ("none", "adaptation", "likelihood", "both", "calm")


def load_before(revision: str, into: Path) -> ModuleType:
    """The judge module of ``revision``, importable next to this tree's as ``judge_before``."""
    package = into / _OLD_PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in _MODULES:
        source = subprocess.run(
            ["git", "show", f"{revision}:detector/core/{name}.py"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for other in _MODULES:
            source = source.replace(f"detector.core.{other} ", f"{_OLD_PACKAGE}.{other} ")
        (package / f"{name}.py").write_text(source)
    sys.path.insert(0, str(into))
    return importlib.import_module(f"{_OLD_PACKAGE}.judge")


def make_judge(module: ModuleType, config: str, windows: int) -> Any:
    """A judge of ``module`` with adaptation, the likelihood (learning every window or only
    calm ones), both or neither (``config``)."""
    adaptation = None
    if config in ("adaptation", "both"):
        adaptation = module.AdaptationRule(windows=windows)
    likelihood = None
    if config in ("likelihood", "both", "calm"):
        # Every model: the artifact's error share is not recorded here.
        likelihood = module.LikelihoodRule(
            windows=windows,
            tail=1e-3,
            combine="max",
            min_error_share=0.0,
            learn="calm" if config == "calm" else "all",
        )
    return module.Judge(
        AlertRule(resolve_after=1, resolve_ratio=1.0),  # the rule these figures were taken with
        threshold=3.0,
        adaptation=adaptation,
        reference_score=1.0,
        likelihood=likelihood,
        prior=module.ScorePrior(0.0, 0.5),
    )


def _timed(judge: Any, devices: list[str], scores: np.ndarray) -> tuple[float, list[float]]:
    """Seconds to judge ``scores`` round-robin over ``devices``, and the thresholds."""
    judge_call = judge.judge
    count = len(devices)
    thresholds = []
    started = time.perf_counter()
    for i, score in enumerate(scores.tolist()):
        thresholds.append(judge_call(devices[i % count], score)[0])
    return time.perf_counter() - started, thresholds


def _scores(rng: np.random.Generator, warmup: int, calls: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores to fill the histories with, then to judge: log-normal around the reference, and
    the judged ones with rare spikes (some windows over, most under)."""
    history = rng.lognormal(0.0, 0.4, warmup)
    stream = rng.lognormal(0.0, 0.4, calls)
    stream[rng.random(calls) < 0.01] *= 20.0
    return history, stream


def measure(
    before: ModuleType,
    after: ModuleType,
    config: str,
    windows: int,
    calls: int,
    repeats: int,
    devices: int,
) -> dict[str, Any]:
    """µs per judge call before and after, per repeat, on one stream; thresholds compared."""
    rng = np.random.default_rng(0)
    names = [f"device-{d}" for d in range(devices)]
    warmup, stream = _scores(rng, windows * devices, calls)
    figures: dict[str, list[float]] = {"before": [], "after": []}
    identical = True
    for _ in range(repeats):
        thresholds = {}
        for label, module in (("before", before), ("after", after)):
            judge = make_judge(module, config, windows)
            _timed(judge, names, warmup)
            seconds, thresholds[label] = _timed(judge, names, stream)
            figures[label].append(seconds / calls * 1e6)
        identical &= thresholds["before"] == thresholds["after"]
    before_us = statistics.median(figures["before"])
    after_us = statistics.median(figures["after"])
    return {
        "config": config,
        "us_per_call_before": round(before_us, 3),
        "us_per_call_after": round(after_us, 3),
        "after_over_before": round(after_us / before_us, 3),
        "saved_us_per_call": round(before_us - after_us, 3),
        "repeats_before_us": [round(x, 3) for x in figures["before"]],
        "repeats_after_us": [round(x, 3) for x in figures["after"]],
        "thresholds_identical": identical,
    }


def _window_by_window(
    judge: Any, devices: list[str], scores: np.ndarray
) -> tuple[float, list[float], list[tuple[int, str]], list[bool]]:
    """Seconds to judge the windows one call at a time, as the judge stage did, and the results."""
    judge_call, firing_call = judge.judge, judge.firing
    thresholds, transitions, firing = [], [], []
    started = time.perf_counter()
    for row, (device_id, score) in enumerate(zip(devices, scores.tolist(), strict=True)):
        threshold, transition = judge_call(device_id, score)
        thresholds.append(threshold)
        firing.append(firing_call(device_id))
        if transition is not None:
            transitions.append((row, transition))
    return time.perf_counter() - started, thresholds, transitions, firing


def _batched(
    judge: Any, devices: list[str], scores: np.ndarray, batch: int
) -> tuple[float, list[float], list[tuple[int, str]], list[bool]]:
    """Seconds to judge the windows ``batch`` at a time with ``judge_many``, and the results."""
    judged = []
    started = time.perf_counter()
    for start in range(0, len(devices), batch):
        judged.append(
            judge.judge_many(devices[start : start + batch], scores[start : start + batch])
        )
    seconds = time.perf_counter() - started
    thresholds = np.concatenate([j.thresholds for j in judged]).tolist()
    transitions = [
        (start + row, state)
        for start, j in zip(range(0, len(devices), batch), judged, strict=True)
        for row, state in j.transitions
    ]
    firing = np.concatenate([j.firing for j in judged]).tolist()
    return seconds, thresholds, transitions, firing


def measure_batch(
    module: ModuleType,
    config: str,
    windows: int,
    calls: int,
    repeats: int,
    devices: int,
    batch: int,
) -> dict[str, Any]:
    """µs per window judged window by window and in batches, from the same full histories."""
    rng = np.random.default_rng(1)
    names = [f"device-{d}" for d in range(devices)]
    warmed = make_judge(module, config, windows)
    warmup, stream = _scores(rng, windows * devices, calls)
    warmed.judge_many([names[i % devices] for i in range(len(warmup))], warmup)
    stream_devices = [names[d] for d in rng.integers(0, devices, calls)]
    figures: dict[str, list[float]] = {"window": [], "batch": []}
    identical = True
    for _ in range(repeats):
        window = _window_by_window(copy.deepcopy(warmed), stream_devices, stream)
        batched = _batched(copy.deepcopy(warmed), stream_devices, stream, batch)
        figures["window"].append(window[0] / calls * 1e6)
        figures["batch"].append(batched[0] / calls * 1e6)
        identical &= window[1:] == batched[1:]
    window_us = statistics.median(figures["window"])
    batch_us = statistics.median(figures["batch"])
    return {
        "config": config,
        "us_per_window_judge": round(window_us, 3),
        "us_per_window_judge_many": round(batch_us, 3),
        "batch_over_window": round(batch_us / window_us, 3),
        "repeats_judge_us": [round(x, 3) for x in figures["window"]],
        "repeats_judge_many_us": [round(x, 3) for x in figures["batch"]],
        "identical": identical,
    }


def main(argv: list[str] | None = None) -> int:
    """Measure every configuration, print a table and write the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=BEFORE, help="git revision of the old judge")
    parser.add_argument("--windows", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=20_000, help="timed calls per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1024, help="windows per judge_many batch")
    parser.add_argument("--batch-devices", type=int, default=100, help="devices in the batches")
    parser.add_argument("--parts", default="stats,batch", help="comma-separated: stats,batch")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    after = importlib.import_module("detector.core.judge")
    rows: list[dict[str, Any]] = []
    if "stats" in parts:
        with tempfile.TemporaryDirectory() as scratch:
            before = load_before(args.before, Path(scratch))
            rows = [
                measure(before, after, config, args.windows, args.calls, args.repeats, args.devices)
                for config in CONFIGS
            ]
        print(f"{'config':<12}{'before µs':>11}{'after µs':>10}{'after/before':>14}  identical")
        for row in rows:
            print(
                f"{row['config']:<12}{row['us_per_call_before']:>11.2f}"
                f"{row['us_per_call_after']:>10.2f}{row['after_over_before']:>14.2f}"
                f"  {row['thresholds_identical']}"
            )
    batch_rows: list[dict[str, Any]] = []
    if "batch" in parts:
        batch_rows = [
            measure_batch(
                after,
                config,
                args.windows,
                args.calls,
                args.repeats,
                args.batch_devices,
                args.batch,
            )
            for config in CONFIGS
        ]
        print(f"{'config':<12}{'judge µs':>10}{'judge_many µs':>15}{'ratio':>8}  identical")
        for row in batch_rows:
            print(
                f"{row['config']:<12}{row['us_per_window_judge']:>10.2f}"
                f"{row['us_per_window_judge_many']:>15.2f}{row['batch_over_window']:>8.2f}"
                f"  {row['identical']}"
            )
    revision = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    result = {
        "what": "µs per Judge.judge call, every device's history full (windows each)",
        "before_revision": args.before,
        "after_tree": revision,  # -dirty: uncommitted changes included
        "windows": args.windows,
        "calls_per_repeat": args.calls,
        "repeats": args.repeats,
        "devices": args.devices,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "rows": rows,
        "batch": {
            "what": "µs per window: judge + firing per window vs judge_many per batch",
            "windows_per_batch": args.batch,
            "devices": args.batch_devices,
            "rows": batch_rows,
        },
    }
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")
    identical = all(row["thresholds_identical"] for row in rows)
    return 0 if identical and all(row["identical"] for row in batch_rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
