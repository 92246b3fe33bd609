"""Command line: ``trainer fit|list|promote|rollback`` (also ``python -m trainer``)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from detector.exits import error_exit
from detector.settings import ConfigError

if TYPE_CHECKING:
    from detector.config import KafkaConfig


__all__ = ["build_parser", "main"]


def _kafka_settings(config: Path | None, bootstrap_servers: str | None) -> KafkaConfig:
    """The Kafka section of a detector config (TLS, SASL, ``DETECTOR_KAFKA__*`` overrides).

    Without ``config``, plain settings for ``bootstrap_servers``; with both, the servers are
    replaced and everything else is the config's.
    """
    from detector.config import KafkaConfig, load_config
    from detector.settings import validate_settings

    settings = load_config(config).kafka.model_dump(exclude_unset=True) if config else {}
    if bootstrap_servers:
        settings["bootstrap_servers"] = bootstrap_servers.split(",")
    return validate_settings(KafkaConfig, settings)


def _fit(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError

    from detector.core.artifact import ArtifactError, load_artifact
    from detector.core.datafiles import DataFileError
    from detector.logs import setup_logging
    from trainer.config import load_config
    from trainer.fit import TrainingError, fit
    from trainer.kafka_source import parse_time, read_normal_from_kafka

    setup_logging("INFO")
    try:
        config = load_config(args.config)
        if args.output:
            config.output.dir = args.output
        data = None
        if args.from_kafka:
            if not (args.since and args.until and (args.bootstrap_servers or args.kafka_config)):
                raise DataFileError(
                    "--from-kafka needs --since, --until and --bootstrap-servers or --kafka-config"
                )
            sensors = config.data.sensors
            if sensors is None:
                try:
                    sensors = load_artifact(config.output.dir).metadata.feature_names
                except ArtifactError:
                    sensors = None
            kafka = _kafka_settings(args.kafka_config, args.bootstrap_servers)
            data = read_normal_from_kafka(
                kafka,
                args.from_kafka,
                parse_time(args.since),
                parse_time(args.until),
                sensors,
            )
        result = fit(
            config,
            show_progress=not args.no_progress,
            data=data,
            exclude_flagged=args.exclude_flagged,
            promote=args.promote,
        )
    except (ConfigError, DataFileError, TrainingError, ValueError, KafkaError) as exc:
        return error_exit("trainer", exc)
    calibration = (
        f" from {result.validation_windows} validation + {result.threshold_train_windows} "
        f"training windows, training scores x{result.train_score_factor:.3g}"
        if result.threshold_train_windows
        else ""
    )
    comparison = (
        f"; held-out normal windows flagged: new {result.holdout_flag_rate:.4f}"
        + (
            f", current {result.current_holdout_flag_rate:.4f}"
            if result.current_holdout_flag_rate is not None
            else ""
        )
        if result.holdout_flag_rate is not None
        else ""
    )
    own = (
        f"; training windows flagged {result.train_flag_rate:.4f} "
        f"(warning above {result.max_flag_rate:.4f})"
        if result.train_flag_rate is not None and result.max_flag_rate is not None
        else ""
    )
    print(
        f"model {result.version} -> {result.path} "
        f"(threshold {result.threshold:.5g}{calibration}, validation loss "
        f"{result.validation_loss:.5f}, {result.epochs} epochs, {result.seconds:.1f} s"
        f"{comparison}{own}); "
        + ("now current" if result.promoted else "not promoted, current model kept")
    )
    return 0


def _format_time(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _format_number(value: float | None) -> str:
    return "-" if value is None else f"{value:.5g}"


def _list(args: argparse.Namespace) -> int:
    from trainer.registry import RegistryError, list_versions, read_current

    try:
        versions = list_versions(args.models)
    except RegistryError as exc:
        return error_exit("trainer", exc)
    if not versions:
        return error_exit("trainer", f"no model versions in {args.models}")
    current = read_current(args.models)
    rows = [("", "VERSION", "CREATED", "THRESHOLD", "VAL_LOSS")]
    for info in versions:
        rows.append(
            (
                "*" if info.version == current else "",
                info.version,
                _format_time(info.created_at),
                _format_number(info.threshold),
                info.error or _format_number(info.validation_loss),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        padded = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        print("  ".join([*padded, row[4]]))
    if current is None:
        print(f"(no current pointer in {args.models})")
    elif current not in {info.version for info in versions}:
        print(f"(current names {current!r}, which is not in {args.models})")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from trainer.registry import RegistryError, promote

    try:
        previous = promote(args.models, args.version)
    except RegistryError as exc:
        return error_exit("trainer", exc)
    print(
        f"current: {previous or '(none)'} -> {args.version} (a running detector swaps it in at its next registry check)"
    )
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from trainer.registry import RegistryError, rollback

    try:
        previous, target = rollback(args.models)
    except RegistryError as exc:
        return error_exit("trainer", exc)
    print(
        f"current: {previous} -> {target} (a running detector swaps it in at its next registry check)"
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
    fit.add_argument("--from-kafka", metavar="TOPIC", help="train on readings from this topic")
    fit.add_argument("--since", help="with --from-kafka: start time (ISO-8601 or epoch seconds)")
    fit.add_argument("--until", help="with --from-kafka: end time, exclusive")
    fit.add_argument("--bootstrap-servers", help="with --from-kafka: comma-separated brokers")
    fit.add_argument(
        "--kafka-config",
        type=Path,
        help="with --from-kafka: a detector config whose kafka section (TLS, SASL, "
        "DETECTOR_KAFKA__* overrides) reaches the cluster",
    )
    fit.add_argument(
        "--exclude-flagged",
        action="store_true",
        help="drop what the current model flags before training",
    )
    fit.add_argument(
        "--promote",
        choices=["always", "auto", "never"],
        default="always",
        help="auto: make the new version current only if it flags no more held-out normal "
        "windows than the current one",
    )
    fit.set_defaults(handler=_fit)

    models_help = "registry directory (the trainer's output.dir, e.g. models/pumps)"
    lst = sub.add_parser("list", help="versions in a registry; * marks current")
    lst.add_argument("--models", type=Path, required=True, help=models_help)
    lst.set_defaults(handler=_list)
    pro = sub.add_parser("promote", help="point current at VERSION after checking it loads")
    pro.add_argument("version")
    pro.add_argument("--models", type=Path, required=True, help=models_help)
    pro.set_defaults(handler=_promote)
    rol = sub.add_parser("rollback", help="point current back at the version current before")
    rol.add_argument("--models", type=Path, required=True, help=models_help)
    rol.set_defaults(handler=_rollback)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``trainer`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
