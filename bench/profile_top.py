"""The top of a py-spy profile: inclusive and self shares of the busiest functions.

Reads py-spy's raw (collapsed stack) output, keeps the samples whose stack passes through a
frame containing ``--within`` (e.g. the pipeline stage of bench/throughput.py), and prints the
functions with the largest share of those samples, counted anywhere on the stack (inclusive)
and as the innermost frame (self). py-spy leaves idle threads out, so shares are of busy time.

Usage: ``python bench/profile_top.py PROFILE.txt --within measure_pipeline [--top 30]``
(``make bench-profile`` records the profile and runs this on it).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path


def read_profile(path: Path, within: str) -> tuple[Counter[str], Counter[str], int]:
    """(inclusive samples, self samples, total samples) of the stacks that pass ``within``."""
    inclusive: Counter[str] = Counter()
    innermost: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or within not in stack:
            continue
        frames = stack.split(";")
        samples = int(count)
        total += samples
        for frame in set(frames):
            inclusive[frame] += samples
        innermost[frames[-1]] += samples
    return inclusive, innermost, total


def main(argv: list[str] | None = None) -> int:
    """Print the top of the profile."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path, help="py-spy record -f raw output")
    parser.add_argument("--within", default="", help="keep stacks with a frame containing this")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    inclusive, innermost, total = read_profile(args.profile, args.within)
    if not total:
        print(f"no samples in {args.profile} pass through {args.within!r}", file=sys.stderr)
        return 1
    print(f"{total} samples through {args.within!r}")
    for title, counts in (("inclusive", inclusive), ("self", innermost)):
        print(f"\n{title}:")
        for frame, samples in counts.most_common(args.top):
            print(f"{samples / total:6.1%}  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
