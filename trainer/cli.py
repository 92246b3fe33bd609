"""Command line: ``trainer fit`` (also ``python -m trainer``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detector.settings import ConfigError

EXIT_CONFIG = 2


def _fit(args: argparse.Namespace) -> int:
    from detector.datafiles import DataFileError
    from detector.logs import setup_logging
    from trainer.config import load_config
    from trainer.fit import TrainingError, fit

    setup_logging("INFO")
    try:
        config = load_config(args.config)
        if args.output:
            config.output.dir = args.output
        result = fit(config, show_progress=not args.no_progress)
    except (ConfigError, DataFileError, TrainingError) as exc:
        print(f"trainer: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(
        f"model {result.version} -> {result.path} "
        f"(threshold {result.threshold:.5g}, validation loss {result.validation_loss:.5f}, "
        f"{result.epochs} epochs, {result.seconds:.1f} s)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(prog="trainer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="train on normal data and write a new model version")
    fit.add_argument(
        "--config", type=Path, required=True, help="YAML config (TRAINER_* env overrides)"
    )
    fit.add_argument("--output", type=Path, help="override output.dir")
    fit.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    fit.set_defaults(handler=_fit)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``trainer`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
