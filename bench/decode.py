"""Decoding a whole poll of reading messages (issue 20 item 1): microseconds per reading.

One poll of ``--records`` message values (8 sensors each, one JSON reading per value as in the
README), and the same readings as gateway batches of ``--batch`` readings per value, decoded into
columns (device ids, timestamps, an ``(n, 8)`` float32 matrix in the parser's feature order) by:

* ``parse``: :meth:`ReadingParser.parse` value by value (orjson, then Python checks), the
  columns gathered from its messages; ``parse_messages``: the messages alone;
* ``msgspec``: each value decoded by ``msgspec.json.Decoder`` into a typed ``Struct``, the
  columns built in Python; ``msgspec_joined``: the values joined into one JSON array and
  decoded in one call (unsafe as it stands: values that are not JSON on their own can join into
  an array of as many readings, so each would need checking anyway);
* ``parse_many``: :meth:`ReadingParser.parse_many`, what the daemon calls, its messages alone
  and gathered into columns as for ``parse``;
* ``pyarrow``: ``pyarrow.json.read_json`` on the newline-joined values with an explicit schema
  (one object per line: it cannot read the gateway batches, and it neither counts unknown
  sensors nor checks anything the parser checks).

Every option's columns are checked equal to ``parse``'s first. The options run interleaved,
round after round, and each figure is the best round, so a slow stretch of a shared machine
weighs on all alike: compare them as ratios within one run. Writes ``bench/results/decode.json``.

Usage: ``python bench/decode.py [--records 2000] [--batch 100] [--rounds 15]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.json as pa_json

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import revision
from detector.core.readings import ParsedMessage, ReadingParser

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "decode.json"
FEATURES = [f"s{i}" for i in range(8)]
Columns = tuple[list[str], list[float], np.ndarray]


class WireReading(msgspec.Struct):
    """A reading as msgspec decodes it for the ``msgspec`` options."""

    device_id: str
    ts: float
    sensors: dict[str, float]
    profile: str | None = None


def make_readings(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` readings of 200 devices, sensor values with three decimals as devices send."""
    rng = random.Random(seed)
    return [
        {
            "device_id": f"pump-{i % 200}",
            "ts": 1_700_000_000.0 + i * 0.5,
            "sensors": {name: round(rng.gauss(50.0, 10.0), 3) for name in FEATURES},
        }
        for i in range(count)
    ]


def columns_of(messages: Sequence[ParsedMessage]) -> Columns:
    """The readings of parsed messages as columns."""
    device_ids: list[str] = []
    timestamps: list[float] = []
    vectors: list[np.ndarray] = []
    for message in messages:
        device_ids += message.device_ids
        timestamps += message.timestamps
        vectors += message.values
    return device_ids, timestamps, np.stack(vectors)


def columns_of_structs(documents: Sequence[WireReading | list[WireReading]]) -> Columns:
    """Decoded structs as columns (a missing sensor is ``None``, which numpy makes NaN)."""
    device_ids: list[str] = []
    timestamps: list[float] = []
    rows: list[list[float | None]] = []
    for document in documents:
        for reading in document if type(document) is list else (document,):
            device_ids.append(reading.device_id)
            timestamps.append(reading.ts)
            rows.append(list(map(reading.sensors.get, FEATURES)))
    return device_ids, timestamps, np.array(rows, dtype=np.float32)


def options(parser: ReadingParser, batched: bool) -> dict[str, Callable[[list[bytes]], object]]:
    """The decoders to time, by name; each takes a poll's values."""
    decoder = msgspec.json.Decoder(WireReading | list[WireReading])
    joined = msgspec.json.Decoder(list[WireReading | list[WireReading]])
    schema = pa.schema(
        [
            ("device_id", pa.string()),
            ("ts", pa.float64()),
            ("sensors", pa.struct([(name, pa.float64()) for name in FEATURES])),
            ("profile", pa.string()),
        ]
    )
    arrow_options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")

    def arrow(values: list[bytes]) -> Columns:
        table = pa_json.read_json(io.BytesIO(b"\n".join(values)), parse_options=arrow_options)
        sensors = table.column("sensors").combine_chunks()
        matrix = np.column_stack(
            [sensors.field(name).to_numpy(zero_copy_only=False) for name in FEATURES]
        ).astype(np.float32)
        return table.column("device_id").to_pylist(), table.column("ts").to_pylist(), matrix

    found: dict[str, Callable[[list[bytes]], object]] = {
        "parse_messages": lambda values: [parser.parse(value) for value in values],
        "parse": lambda values: columns_of([parser.parse(value) for value in values]),
        "msgspec": lambda values: columns_of_structs([decoder.decode(v) for v in values]),
        "msgspec_joined": lambda values: columns_of_structs(
            joined.decode(b"[" + b",".join(values) + b"]")
        ),
        "parse_many_messages": parser.parse_many,
        "parse_many": lambda values: columns_of(parser.parse_many(values)),
    }
    if not batched:
        found["pyarrow"] = arrow
    return found


def check(found: Columns, expected: Columns, name: str) -> None:
    """``found`` holds ``expected``'s readings exactly, NaN and float32 rounding included."""
    device_ids, timestamps, matrix = found
    if device_ids != expected[0] or list(timestamps) != expected[1]:
        raise AssertionError(f"{name}: other device ids or timestamps than parse's")
    if matrix.dtype != np.float32 or matrix.tobytes() != expected[2].tobytes():
        raise AssertionError(f"{name}: another matrix than parse's")


def measure(
    values: list[bytes], readings: int, parser: ReadingParser, batched: bool, rounds: int
) -> dict[str, float]:
    """Microseconds per reading of each option: the best of ``rounds`` interleaved rounds."""
    found = options(parser, batched)
    expected = found["parse"](values)
    for name, decode in found.items():
        if not name.endswith("_messages"):
            check(decode(values), expected, name)
    best = dict.fromkeys(found, float("inf"))
    for _ in range(rounds):
        for name, decode in found.items():
            start = time.perf_counter()
            decode(values)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: round(seconds / readings * 1e6, 3) for name, seconds in best.items()}


def main() -> None:
    """Time every option on single-reading and gateway-batch polls; print and save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000, help="readings in a poll")
    parser.add_argument("--batch", type=int, default=100, help="readings per gateway batch")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    readings = make_readings(args.records)
    single = [orjson.dumps(reading) for reading in readings]
    batches = [
        orjson.dumps(readings[start : start + args.batch])
        for start in range(0, len(readings), args.batch)
    ]
    reading_parser = ReadingParser(FEATURES)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg()[0],
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "msgspec": msgspec.__version__,
            "orjson": orjson.__version__,
            "pyarrow": pa.__version__,
        },
        "settings": {"records": args.records, "batch": args.batch, "rounds": args.rounds},
        "revision": revision(),
        "message_bytes": {"single": len(single[0]), "batched": len(batches[0])},
        "us_per_reading": {
            "single": measure(single, len(readings), reading_parser, False, args.rounds),
            "batched": measure(batches, len(readings), reading_parser, True, args.rounds),
        },
    }
    figures = result["us_per_reading"]
    # Messages against parse's messages, columns against parse's columns.
    result["speedup_vs_parse"] = {
        kind: {
            name: round(per["parse_messages" if name.endswith("_messages") else "parse"] / us, 2)
            for name, us in per.items()
        }
        for kind, per in figures.items()
    }
    print(f"{'option':22}{'single':>10}{'batched':>10}   (µs per reading, best round)")
    for name in figures["single"]:
        batched = figures["batched"].get(name)
        shown = "n/a" if batched is None else f"{batched:.3f}"
        print(f"{name:22}{figures['single'][name]:>10.3f}{shown:>10}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
