"""Command line: ``trainer fit|list|promote|rollback|shadow|shadow-report`` (also ``python -m trainer``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from detector.exits import EXIT_UNAVAILABLE, error_exit
from detector.settings import ConfigError

if TYPE_CHECKING:
    from detector.config import KafkaConfig
    from detector.core.artifact import Artifact


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


def _warm_start(registry: Path) -> Artifact:
    """The registry's current model, to fine-tune (``--warm-start``)."""
    from detector.core.artifact import ArtifactError, load_artifact
    from trainer.fit import TrainingError

    try:
        return load_artifact(registry)
    except ArtifactError as exc:
        raise TrainingError(f"--warm-start needs a current model in {registry}: {exc}") from None


def _fit(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError

    from detector.core.artifact import ArtifactError, load_artifact
    from detector.core.datafiles import DataFileError
    from detector.core.episodes import episode_spans
    from detector.logs import setup_logging
    from trainer.config import load_config, profile_registry
    from trainer.data import load_normal_files
    from trainer.fit import TrainingError, fit
    from trainer.kafka_source import parse_time, read_alert_transitions, read_normal_from_kafka

    setup_logging("INFO")
    try:
        config = load_config(args.config)
        if args.profile is not None:
            config.output.dir = profile_registry(config.output, args.profile)
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
            now = time.time()  # one clock for both ends: "-1d" to "now" is exactly a day
            data = read_normal_from_kafka(
                kafka,
                args.from_kafka,
                parse_time(args.since, now),
                parse_time(args.until, now),
                sensors,
                profile=args.profile,
            )
        elif args.profile is not None:
            data = load_normal_files(config.data, args.profile)
        episodes = None
        if args.exclude_alerts:
            if not (args.bootstrap_servers or args.kafka_config):
                raise DataFileError("--exclude-alerts needs --bootstrap-servers or --kafka-config")
            kafka = _kafka_settings(args.kafka_config, args.bootstrap_servers)
            episodes = episode_spans(
                read_alert_transitions(kafka, args.exclude_alerts, profile=args.profile)
            )
        result = fit(
            config,
            show_progress=not args.no_progress,
            data=data,
            exclude_flagged=args.exclude_flagged,
            promote=args.promote,
            exclude_episodes=episodes,
            warm_start=_warm_start(config.output.dir) if args.warm_start else None,
        )
    except KafkaError as exc:
        # Only the --from-kafka and --exclude-alerts reads talk to Kafka, before anything is
        # trained or written: a broker that does not answer is an outage the Job's retry can
        # outlast, not a mistake.
        topics = " and ".join(repr(t) for t in (args.from_kafka, args.exclude_alerts) if t)
        problem = f"cannot read {topics} from Kafka: {exc}"
        return error_exit("trainer", problem, code=EXIT_UNAVAILABLE)
    except (ConfigError, DataFileError, TrainingError, ValueError) as exc:
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
    if result.shadowed:
        outcome = (
            f"candidate, scored in shadow beside current {result.current_version} (`trainer "
            f"promote --candidate --models {config.output.dir}` makes it current)"
        )
    elif result.promoted and args.promote == "shadow":
        outcome = "now current (no current model to shadow)"
    elif result.promoted:
        outcome = "now current"
    else:
        outcome = "not promoted, current model kept"
    print(
        f"model {result.version} -> {result.path} "
        f"(threshold {result.threshold:.5g}{calibration}, validation loss "
        f"{result.validation_loss:.5f}, {result.epochs} epochs, {result.seconds:.1f} s"
        f"{comparison}{own}); {outcome}"
    )
    return 0


def _format_time(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _format_number(value: float | None) -> str:
    return "-" if value is None else f"{value:.5g}"


def _list(args: argparse.Namespace) -> int:
    from trainer.registry import RegistryError, list_versions, read_candidate, read_current

    try:
        versions = list_versions(args.models)
    except RegistryError as exc:
        return error_exit("trainer", exc)
    if not versions:
        return error_exit("trainer", f"no model versions in {args.models}")
    current = read_current(args.models)
    candidate = read_candidate(args.models)
    rows = [("", "VERSION", "CREATED", "THRESHOLD", "VAL_LOSS")]
    for info in versions:
        rows.append(
            (
                ("*" if info.version == current else "")
                + ("c" if info.version == candidate else ""),
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
    if candidate is not None:
        if candidate in {info.version for info in versions}:
            print(f"candidate (c): {candidate}, scored in shadow beside current")
        else:
            print(f"(candidate names {candidate!r}, which is not in {args.models})")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from trainer.registry import RegistryError, promote, promote_candidate

    if (args.version is None) == (not args.candidate):
        return error_exit("trainer", "promote takes either VERSION or --candidate")
    try:
        if args.candidate:
            previous, version = promote_candidate(args.models)
        else:
            version = args.version
            previous = promote(args.models, version)
    except RegistryError as exc:
        return error_exit("trainer", exc)
    print(
        f"current: {previous or '(none)'} -> {version} (a running detector swaps it in at its next registry check)"
    )
    return 0


def _shadow(args: argparse.Namespace) -> int:
    from trainer.registry import RegistryError, clear_candidate, shadow

    if (args.version is None) == (not args.clear):
        return error_exit("trainer", "shadow takes either VERSION or --clear")
    try:
        if args.clear:
            previous, version = clear_candidate(args.models), None
        else:
            version = args.version
            previous = shadow(args.models, version)
    except RegistryError as exc:
        return error_exit("trainer", exc)
    print(
        f"candidate: {previous or '(none)'} -> {version or '(none)'} (a running detector "
        f"{'starts' if version else 'stops'} shadow scoring at its next registry check)"
    )
    return 0


DEFAULT_METRICS_URL = "http://localhost:9108/metrics"
# A daemon's exposition is tens of kilobytes; far more is not a detector answering.
_MAX_EXPOSITION_BYTES = 32 << 20


@dataclass(frozen=True)
class _ShadowFigures:
    """What ``trainer shadow-report`` prints, as its ``--json`` object holds it."""

    profile: str
    candidate: str
    current: str
    registry_current: str | None
    since: str | None
    windows_compared: int
    candidate_firing_alerts: int
    current_firing_alerts: int
    verdict: str


def _fetch_exposition(url: str) -> str:
    """The Prometheus text at ``url``; raises ``ValueError`` with one line when unreachable."""
    import urllib.error
    import urllib.request

    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--metrics-url {url!r} is not an http(s) URL")
    try:
        with urllib.request.urlopen(url, timeout=5.0) as response:
            body = response.read(_MAX_EXPOSITION_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ValueError(f"cannot read the daemon's metrics at {url}: {reason}") from None
    if len(body) > _MAX_EXPOSITION_BYTES:
        raise ValueError(f"the metrics at {url} are over {_MAX_EXPOSITION_BYTES} bytes")
    return body.decode("utf-8", errors="replace")


def _shadow_figures(
    text: str, url: str, candidate: str, registry_current: str | None, profile: str | None
) -> _ShadowFigures:
    """The daemon's shadow comparison of ``candidate`` from its exposition ``text``.

    Raises ``ValueError`` with one line when the text is not Prometheus' or the daemon does not
    shadow ``candidate`` (for ``profile``, when given).
    """
    from prometheus_client.parser import text_string_to_metric_families

    try:
        # Matched by sample name, not family: the family of a counter drops "_total".
        samples = [
            sample for family in text_string_to_metric_families(text) for sample in family.samples
        ]
    except (ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"the metrics at {url} are not Prometheus text: {exc}") from None

    def values(name: str, **labels: str) -> list[float]:
        return [
            s.value
            for s in samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    infos = [
        s.labels
        for s in samples
        if s.name == "detector_shadow_info" and s.value == 1 and "profile" in s.labels
    ]
    matching = [
        labels
        for labels in infos
        if labels.get("candidate") == candidate and profile in (None, labels["profile"])
    ]
    if not matching:
        shadowing = ", ".join(
            f"{labels['profile']}: {labels.get('candidate', '?')}" for labels in infos
        )
        raise ValueError(
            f"the daemon at {url} is not shadowing candidate {candidate} "
            f"(shadowing: {shadowing or 'nothing'}); it reads the registry at its next check"
        )
    if len(matching) > 1:
        profiles = ", ".join(labels["profile"] for labels in matching)
        raise ValueError(
            f"candidate {candidate} is shadowed for profiles {profiles}: pick one with --profile"
        )
    labels = matching[0]
    name = labels["profile"]
    started = values("detector_shadow_started_timestamp_seconds", profile=name)
    firing = {
        model: round(
            sum(values("detector_shadow_alerts_total", profile=name, model=model, state="firing"))
        )
        for model in ("candidate", "current")
    }
    difference = firing["candidate"] - firing["current"]
    return _ShadowFigures(
        profile=name,
        candidate=candidate,
        current=labels.get("current", "?"),
        registry_current=registry_current,
        since=_format_time(datetime.fromtimestamp(started[0], timezone.utc)) if started else None,
        windows_compared=round(sum(values("detector_shadow_windows_scored_total", profile=name))),
        candidate_firing_alerts=firing["candidate"],
        current_firing_alerts=firing["current"],
        verdict="fewer" if difference < 0 else "more" if difference > 0 else "as many",
    )


def _shadow_report(args: argparse.Namespace) -> int:
    from trainer.registry import read_candidate, read_current

    root = args.models
    if not root.is_dir():
        return error_exit("trainer", f"{root} is not a directory (expected a model registry)")
    candidate = read_candidate(root)
    if candidate is None:
        return error_exit(
            "trainer", f"no candidate in {root}: nothing is shadowed (trainer shadow VERSION)"
        )
    try:
        text = _fetch_exposition(args.metrics_url)
        figures = _shadow_figures(
            text, args.metrics_url, candidate, read_current(root), args.profile
        )
    except ValueError as exc:
        return error_exit("trainer", exc)
    if args.json:
        print(json.dumps(asdict(figures)))
        return 0
    stale = (
        f" The daemon still scores current {figures.current} while the registry's current is "
        f"{figures.registry_current or '(none)'}: it has not picked up the registry yet."
        if figures.current != figures.registry_current
        else ""
    )
    print(
        f"Profile {figures.profile}: candidate {figures.candidate} vs current {figures.current}, "
        f"{figures.windows_compared} windows compared since {figures.since or '(unknown)'}: "
        f"{figures.candidate_firing_alerts} firing alerts from the candidate, "
        f"{figures.current_firing_alerts} from current: the candidate raised "
        f"{figures.verdict} alerts {'as' if figures.verdict == 'as many' else 'than'} "
        f"current.{stale}"
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
    fit.add_argument(
        "--profile",
        metavar="NAME",
        help="train the device profile NAME: its rows (data.profile_column) or readings, into "
        "the registry <output.profiles_dir>/NAME",
    )
    fit.add_argument("--output", type=Path, help="override output.dir (and the profile's registry)")
    fit.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    fit.add_argument("--from-kafka", metavar="TOPIC", help="train on readings from this topic")
    fit.add_argument(
        "--since",
        help="with --from-kafka: start time (ISO-8601, epoch seconds, now, or relative: -7d, "
        "-12h, -30m)",
    )
    fit.add_argument("--until", help="with --from-kafka: end time, exclusive (same forms)")
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
        "--warm-start",
        action="store_true",
        help="fine-tune the registry's current model (same sensors and architecture) instead of "
        "a fresh fit; early stopping may end it before training.min_steps",
    )
    fit.add_argument(
        "--exclude-alerts",
        metavar="TOPIC",
        help="drop the readings inside the alert episodes on this alerts topic (what the "
        "detector paged on; its kafka settings as for --from-kafka) before training",
    )
    fit.add_argument(
        "--promote",
        choices=["always", "auto", "never", "shadow"],
        default="always",
        help="auto: make the new version current only if it flags no more held-out normal "
        "windows than the current one; shadow: make it the candidate the daemon scores beside "
        "current (current if there is none yet)",
    )
    fit.set_defaults(handler=_fit)

    models_help = "registry directory (the trainer's output.dir, e.g. models/pumps)"
    lst = sub.add_parser("list", help="versions in a registry; * marks current, c the candidate")
    lst.add_argument("--models", type=Path, required=True, help=models_help)
    lst.set_defaults(handler=_list)
    pro = sub.add_parser("promote", help="point current at VERSION after checking it loads")
    pro.add_argument("version", nargs="?")
    pro.add_argument(
        "--candidate", action="store_true", help="promote the shadow candidate (instead of VERSION)"
    )
    pro.add_argument("--models", type=Path, required=True, help=models_help)
    pro.set_defaults(handler=_promote)
    sha = sub.add_parser(
        "shadow", help="point the candidate (scored in shadow beside current) at VERSION"
    )
    sha.add_argument("version", nargs="?")
    sha.add_argument("--clear", action="store_true", help="remove the candidate: shadowing stops")
    sha.add_argument("--models", type=Path, required=True, help=models_help)
    sha.set_defaults(handler=_shadow)
    rep = sub.add_parser(
        "shadow-report", help="how the candidate's alerts compare with current's, from the daemon"
    )
    rep.add_argument("--models", type=Path, required=True, help=models_help)
    rep.add_argument(
        "--metrics-url",
        default=DEFAULT_METRICS_URL,
        help=f"the daemon's Prometheus endpoint (default {DEFAULT_METRICS_URL})",
    )
    rep.add_argument("--profile", help="the daemon profile, when it shadows the candidate twice")
    rep.add_argument("--json", action="store_true", help="the figures as one JSON object")
    rep.set_defaults(handler=_shadow_report)
    rol = sub.add_parser("rollback", help="point current back at the version current before")
    rol.add_argument("--models", type=Path, required=True, help=models_help)
    rol.set_defaults(handler=_rollback)
    return parser


def _attach_relative_times(argv: list[str]) -> list[str]:
    """``--since -7d`` as ``--since=-7d``: argparse would take ``-7d`` for an option."""
    joined: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        value = argv[index + 1] if index + 1 < len(argv) else ""
        if arg in ("--since", "--until") and value[:1] == "-" and value[1:2].isdigit():
            joined.append(f"{arg}={value}")
            index += 2
        else:
            joined.append(arg)
            index += 1
    return joined


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``trainer`` console script."""
    args = build_parser().parse_args(_attach_relative_times(sys.argv[1:] if argv is None else argv))
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
