"""Command line: ``detector run | replay | evaluate | synth`` (also ``python -m detector``)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from detector.core.routing import DEFAULT_PROFILE
from detector.exits import EXIT_UNAVAILABLE, error_exit
from detector.settings import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from detector.config import DetectorConfig, KafkaConfig
    from detector.evaluate import DeviceEvaluation, ModelSwap
    from detector.lane import Model

__all__ = ["build_parser", "main"]

log = logging.getLogger("detector")


class _FirstError(logging.Handler):
    """Keeps the first error kafka-python logs: why the bootstrap servers did not answer."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.message: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        """Remember the first message only."""
        if self.message is None:
            self.message = record.getMessage()


@contextlib.contextmanager
def _bootstrapping() -> Iterator[_FirstError]:
    """Hold back kafka-python's retry logs while a client bootstraps; a failure is one line."""
    kafka_log = logging.getLogger("kafka")
    first = _FirstError()
    kafka_log.addHandler(first)
    kafka_log.propagate = False
    try:
        yield first
    finally:
        kafka_log.removeHandler(first)
        kafka_log.propagate = True


def _unreachable(kafka: KafkaConfig, first: _FirstError, error: Exception | None = None) -> str:
    """Why start-up gives up on the bootstrap servers, in one line (exit ``EXIT_UNAVAILABLE``).

    Refused or failed SASL and TLS handshakes end the same way (kafka-python retries them until
    the timeout too), so they exit ``EXIT_UNAVAILABLE`` as well; the line names the protocol,
    mechanism and user (never the password) and the first error says what went wrong.
    """
    from detector.clients.kafka_python import explain_error

    message = explain_error(first.message or (str(error) if error is not None else ""))
    cause = f"; first error: {message}" if message else ""
    return (
        f"cannot reach Kafka at {', '.join(kafka.bootstrap_servers)}{_security(kafka)} within "
        f"{kafka.bootstrap_timeout_ms / 1000:g} s (kafka.bootstrap_timeout_ms){cause}"
    )


def _security(kafka: KafkaConfig) -> str:
    """`` over SASL_SSL (SCRAM-SHA-512 as user 'detector')``, or nothing for PLAINTEXT."""
    if kafka.security_protocol == "PLAINTEXT":
        return ""
    if kafka.sasl_mechanism is None:
        return f" over {kafka.security_protocol}"
    return (
        f" over {kafka.security_protocol} ({kafka.sasl_mechanism} as user {kafka.sasl_username!r})"
    )


class _StartupError(Exception):
    """A model the daemon cannot start with (one line for stderr)."""


def _load_models(config: DetectorConfig) -> tuple[dict[str, Model], dict[str, Model]]:
    """Every profile's current model (each must load) and the candidates to shadow (may fail).

    A candidate that does not load or does not fit its current model is logged and left out:
    shadow scoring is an experiment, and a broken experiment must not stop the pages.
    """
    from detector.core.artifact import ArtifactError, resolve_candidate
    from detector.reload import load_compatible, load_model

    models: dict[str, Model] = {}
    candidates: dict[str, Model] = {}
    for name, profile in config.model.profile_map().items():
        where = profile.path if name == DEFAULT_PROFILE else f"{profile.path} (profile {name})"
        try:
            model = load_model(profile.path, config.scoring)
        except (ArtifactError, RuntimeError, MemoryError) as exc:
            raise _StartupError(f"cannot load model from {where}: {exc}") from None
        features = model.artifact.metadata.feature_names
        expected = profile.expected_features
        if expected is not None and expected != features:
            field = "model" if name == DEFAULT_PROFILE else f"model.profiles.{name}"
            raise _StartupError(
                f"cannot load model from {where}: model features {features} differ from "
                f"{field}.expected_features {expected}"
            )
        models[name] = model
        if not config.model.shadow:
            continue
        try:
            path = resolve_candidate(profile.path)
            if path is None:
                continue
            candidate = load_compatible(model.artifact.metadata, path, config.scoring)
        except (ArtifactError, RuntimeError, MemoryError) as exc:
            log.error("not scoring the candidate of %s in shadow: %s", where, exc)
            continue
        candidates[name] = candidate
    return models, candidates


def _run(args: argparse.Namespace) -> int:
    from detector.config import load_config

    # The configuration before torch and the rest: a mistake in it is reported in a second.
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return error_exit("detector", exc)

    from detector.clients import ClientError, open_consumer, open_producer
    from detector.daemon import Detector, install_signal_handlers, tune_garbage_collector
    from detector.health import HealthState, serve
    from detector.kafka_io import Publisher, delivery_timeout_s
    from detector.logs import setup_logging
    from detector.metrics import DetectorMetrics

    setup_logging(config.log_level)
    try:
        models, candidates = _load_models(config)
    except _StartupError as exc:
        return error_exit("detector", exc)
    metrics = DetectorMetrics(profiles=list(models))
    health = HealthState(liveness_timeout_s=config.metrics.liveness_timeout_s)
    try:
        server = serve(config.metrics, metrics.registry, health)
    except OSError as exc:
        where = f"{config.metrics.host}:{config.metrics.port}"
        return error_exit("detector", f"cannot serve metrics on {where}: {exc.strerror}")
    host, port = server.server_address[:2]
    log.info("metrics, /healthz and /readyz on http://%s:%d", host, port)
    detector: Detector | None = None
    with _bootstrapping() as first_error:
        try:
            consumer = open_consumer(config.kafka)
            publisher = Publisher(
                lambda: open_producer(config.kafka),
                timeout_s=delivery_timeout_s(config.kafka) + 1.0,
                on_failure=metrics.publish_failures.inc,
                should_stop=lambda: detector is not None and detector.stopping,
                on_wait=health.progressed,
                on_producer_replaced=metrics.producer_replacements.inc,
                on_dropped=lambda _message: metrics.dead_letters_dropped.inc(),
            )
        except ClientError as exc:
            return error_exit(
                "detector", _unreachable(config.kafka, first_error, exc), code=EXIT_UNAVAILABLE
            )
    detector = Detector(
        config, models, consumer, publisher, metrics, health=health, candidates=candidates
    )
    install_signal_handlers(detector)
    tune_garbage_collector()
    try:
        detector.run()
    finally:
        publisher.close()
        server.shutdown()
    return 0


def _replay(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError

    from detector.clients.kafka_python import build_producer
    from detector.config import KafkaConfig, load_config
    from detector.core.datafiles import DataFileError, load_table
    from detector.kafka_io import delivery_timeout_s
    from detector.logs import setup_logging
    from detector.settings import validate_settings
    from detector_devtools.replay import encode_messages, interleave, replay
    from detector_devtools.synthetic import PROFILE_COLUMN

    setup_logging("INFO")
    try:
        kafka = load_config(args.config).kafka if args.config else KafkaConfig()
        if args.bootstrap_servers:
            servers = args.bootstrap_servers.split(",")
            settings = {**kafka.model_dump(exclude_unset=True), "bootstrap_servers": servers}
            kafka = validate_settings(KafkaConfig, settings)
    except ConfigError as exc:
        return error_exit("detector replay", exc)
    try:
        table = load_table(
            args.file,
            device_column=args.device_column,
            time_column=args.time_column,
            extra_columns=[args.profile_column] if args.profile_column else (),
        )
    except DataFileError as exc:
        return error_exit("detector replay", exc)
    if args.profile_column:
        table = table.rename(columns={args.profile_column: PROFILE_COLUMN})
    if args.rebase_time:
        table["ts"] += time.time() - float(table["ts"].min())
    messages = encode_messages(interleave(table), args.batch)
    with _bootstrapping() as first_error:
        try:
            producer = build_producer(kafka, delivery_timeout_s(kafka))
        except KafkaError:
            return error_exit(
                "detector replay", _unreachable(kafka, first_error), code=EXIT_UNAVAILABLE
            )
    try:
        replay(messages, producer, args.topic, rate=args.rate, readings_per_message=args.batch)
    finally:
        producer.close()
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    import numpy as np
    import pandas as pd
    from tqdm import tqdm

    from detector.config import DetectorConfig, ModelConfig, load_config
    from detector.core.artifact import ArtifactError, load_artifact
    from detector.core.datafiles import DataFileError, load_table
    from detector.core.quality import summarise
    from detector.evaluate import Backtest, RefitError, row_frame

    try:
        config = load_config(args.config) if args.config else None
    except ConfigError as exc:
        return error_exit("detector evaluate", exc)
    if args.plot is not None:
        # Before the model and the data: a missing extra or an unwritable folder is said at once.
        from detector.plot import PlotUnavailable, require_matplotlib

        try:
            require_matplotlib()
        except PlotUnavailable as exc:
            return error_exit("detector evaluate", f"--plot {exc}")
        try:
            args.plot.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return error_exit(
                "detector evaluate", f"cannot write plots to {args.plot}: {exc.strerror}"
            )
    profile = args.profile or DEFAULT_PROFILE
    if config is None:
        if args.model is None:
            return error_exit("detector evaluate", "give --model (or --config and --profile)")
        config = DetectorConfig(model=ModelConfig(path=args.model))
    profiles = config.model.profile_map()
    if profile not in profiles:
        return error_exit(
            "detector evaluate",
            f"no profile {profile!r} in the config (profiles: {list(profiles)})",
        )
    model_path = args.model or profiles[profile].path
    # The profile's own alert settings, then the config narrowed to the one model evaluated.
    retrain = config.retrain
    if args.no_retrain:
        retrain = retrain.model_copy(update={"every_s": 0.0})
    config = config.model_copy(
        update={
            "model": ModelConfig(path=model_path),
            "alerts": config.alerts_for(profile),
            "retrain": retrain,
        }
    )
    try:
        artifact = load_artifact(model_path)
    except ArtifactError as exc:
        return error_exit("detector evaluate", f"cannot load model from {model_path}: {exc}")
    names = artifact.metadata.feature_names
    extra = [args.labels] if args.labels else []
    try:
        tables = [
            load_table(
                path,
                time_column=args.time_column,
                device_column=args.device_column,
                sensors=names,
                extra_columns=extra,
            )
            for path in args.files
        ]
    except DataFileError as exc:
        return error_exit("detector evaluate", exc)
    table = pd.concat(tables, ignore_index=True).sort_values(["device_id", "ts"], kind="stable")
    devices = table["device_id"].nunique()
    args.out.mkdir(parents=True, exist_ok=True)
    # Refits are kept where the user can inspect or promote them.
    backtest = Backtest(artifact, config, profile=profile, registry=args.out / "models")
    try:
        with tqdm(
            total=len(table), desc="evaluating", unit="reading", disable=args.quiet
        ) as progress:
            outcome = backtest.run(table, progress=progress.update)
    except RefitError as exc:
        return error_exit("detector evaluate", exc)
    results = outcome.devices
    rows = pd.concat([row_frame(r) for r in results], ignore_index=True)
    if args.labels:
        labels = pd.to_numeric(table[args.labels], errors="coerce").fillna(0).to_numpy() > 0
        rows["label"] = labels.astype(np.int8)
    rows.to_csv(args.out / "scores.csv", index=False)
    with (args.out / "alerts.jsonl").open("w") as handle:
        for result in results:
            for alert in result.alerts:
                handle.write(alert.model_dump_json() + "\n")
    alerts = len(outcome.alerts)
    print(
        f"{len(rows)} readings of {devices} devices, {alerts} alerts "
        f"(model {artifact.version}); rejected: {outcome.rejected or 'none'}"
    )
    print(f"wrote {args.out / 'scores.csv'} and {args.out / 'alerts.jsonl'}")
    if config.retrain.enabled:
        with (args.out / "refits.jsonl").open("w") as handle:
            for refit in outcome.refits:
                handle.write(json.dumps(dataclasses.asdict(refit)) + "\n")
        swapped = sum(refit.promoted for refit in outcome.refits)
        seconds = sum(refit.seconds for refit in outcome.refits)
        print(
            f"refits: {len(outcome.refits)} every {config.retrain.every_s:g} s of data, "
            f"{swapped} swapped in, {seconds:.1f} s fitting; wrote {args.out / 'refits.jsonl'} "
            f"and the models to {args.out / 'models'}"
        )
    if args.labels:
        per_device = [
            (group["label"].to_numpy(), group["firing"].to_numpy())
            for _, group in rows.groupby("device_id", sort=False)
        ]
        summary = summarise(per_device)
        (args.out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        delay = summary["median_delay"]
        print(
            f"point-wise: F1 {summary['f1']:.3f}, FAR {summary['far']:.2f} %, "
            f"MAR {summary['mar']:.2f} %\n"
            f"events: onset precision {summary['event_precision']:.3f}, episode recall "
            f"{summary['event_recall']:.3f} ({summary['episodes']} episodes), alarms per device "
            f"{summary['alarms_per_device']:.2f}, median detection delay "
            f"{'-' if delay is None else f'{delay:g} readings'}"
        )
    if args.plot is not None:
        _plot_devices(args, table, rows, results, names, artifact.version, outcome.swaps)
    return 0


def _plot_devices(
    args: argparse.Namespace,
    table: pd.DataFrame,
    rows: pd.DataFrame,
    results: list[DeviceEvaluation],
    names: list[str],
    version: str,
    swaps: list[ModelSwap],
) -> None:
    """``--plot DIR``: one PNG per device, its readings, scores, alarms (and labels), and where
    each model swap happened."""
    import numpy as np
    from tqdm import tqdm

    from detector.plot import file_names, plot_device

    readings = {str(device): group for device, group in table.groupby("device_id", sort=False)}
    labels = (
        {str(device): group["label"].to_numpy() for device, group in rows.groupby("device_id")}
        if "label" in rows.columns
        else {}
    )
    stems = file_names(r.device_id for r in results)
    for result in tqdm(results, desc="plotting", unit="device", disable=args.quiet):
        device = readings[result.device_id]
        onsets = int(np.count_nonzero(np.diff(result.firing.astype(np.int8), prepend=0) == 1))
        plot_device(
            args.plot / f"{stems[result.device_id]}.png",
            f"{result.device_id}: model {version}, {onsets} alarm onsets",
            (result.ts * 1000).astype("datetime64[ms]"),
            device[names].to_numpy(dtype=np.float64),
            names,
            result.scores,
            result.thresholds,
            result.firing,
            labels=labels.get(result.device_id),
            swap_rows=np.searchsorted(result.ts, [swap.at for swap in swaps]).tolist(),
        )
    print(f"wrote {len(results)} plots to {args.plot}")


def _synth(args: argparse.Namespace) -> int:
    from detector_devtools.synthetic import (
        PROFILE_COLUMN,
        generate_fleet,
        generate_mixed_fleet,
        split_at,
        write_fleet,
    )

    if args.profiles is not None and not args.mixed:
        return error_exit("detector synth", "--profiles needs --mixed")
    sizes = {
        "n_steps": args.normal_steps + args.stream_steps,
        "seed": args.seed,
        "anomalies_per_device": args.anomalies_per_device,
        "quiet_steps": args.normal_steps,
    }
    try:
        if args.mixed:
            profiles = (args.profiles or "pump,fan").split(",")
            fleet = generate_mixed_fleet(args.devices, profiles=profiles, **sizes)
        else:
            fleet = generate_fleet(args.devices, **sizes)
    except ValueError as exc:
        return error_exit("detector synth", exc)
    for name, part in zip(("normal", "stream"), split_at(fleet, args.normal_steps), strict=True):
        paths = write_fleet(part, args.out, name)
        kinds = ""
        if args.mixed:
            counts = part.readings[PROFILE_COLUMN].value_counts(sort=False)
            kinds = f" ({', '.join(f'{kind} {n}' for kind, n in counts.items())})"
        print(
            f"{name}: {len(part.readings)} rows{kinds}, {len(part.episodes)} anomalies "
            f"-> {paths['readings']}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="detector", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the detector daemon")
    run.add_argument(
        "--config", type=Path, required=True, help="YAML config (DETECTOR_* env overrides)"
    )
    run.set_defaults(handler=_run)

    rep = sub.add_parser("replay", help="stream a CSV/Parquet file into Kafka as readings")
    rep.add_argument("file", type=Path)
    rep.add_argument("--topic", required=True)
    rep.add_argument("--rate", type=float, default=0.0, help="readings per second (0 = max)")
    rep.add_argument("--batch", type=int, default=1, help="readings per message (gateway batches)")
    rep.add_argument(
        "--device-column", help="column with the device id (default: device_id or file name)"
    )
    rep.add_argument("--time-column", help="time column (default: ts/timestamp/time/datetime)")
    rep.add_argument(
        "--profile-column",
        help="column sent as each reading's profile field (detector synth --mixed writes profile)",
    )
    rep.add_argument(
        "--rebase-time", action="store_true", help="shift timestamps so the first is now"
    )
    rep.add_argument("--bootstrap-servers", help="comma-separated; overrides the config")
    rep.add_argument("--config", type=Path, help="detector config to take Kafka settings from")
    rep.set_defaults(handler=_replay)

    ev = sub.add_parser(
        "evaluate",
        help="backtest recorded files through the daemon's own pipeline in time order, with "
        "the config's retrain schedule",
    )
    ev.add_argument("files", type=Path, nargs="+", metavar="FILE", help="CSV or Parquet files")
    ev.add_argument(
        "--model", type=Path, help="artifact dir or registry (default: the --profile's path)"
    )
    ev.add_argument(
        "--profile", help="evaluate as this profile of --config (its alert settings and model)"
    )
    ev.add_argument(
        "--config", type=Path, help="detector config (windows, alerts; DETECTOR_* overrides)"
    )
    ev.add_argument("--out", type=Path, required=True, help="writes scores.csv and alerts.jsonl")
    ev.add_argument("--labels", help="0/1 label column: print point-wise and event metrics")
    ev.add_argument(
        "--plot",
        type=Path,
        metavar="DIR",
        help="also write DIR/<device>.png per device: readings, score and level, alarms, labels "
        "(needs the plot extra: matplotlib)",
    )
    ev.add_argument(
        "--device-column", help="column with the device id (default: device_id or file name)"
    )
    ev.add_argument("--time-column", help="time column (default: ts/timestamp/time/datetime)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.add_argument(
        "--no-retrain",
        action="store_true",
        help="a frozen model: no refits, whatever the config's retrain schedule says",
    )
    ev.set_defaults(handler=_evaluate)

    syn = sub.add_parser(
        "synth",
        help="generate a synthetic fleet: normal.csv (training) and stream.csv (with anomalies)",
    )
    syn.add_argument("--out", type=Path, required=True)
    syn.add_argument(
        "--devices", type=int, default=4, help="devices (of each profile with --mixed)"
    )
    syn.add_argument(
        "--mixed",
        action="store_true",
        help="a fleet of several device profiles: one wide table over every profile's sensors "
        "(empty where a device lacks one) with a profile column; devices are <profile>-<i>",
    )
    syn.add_argument(
        "--profiles",
        help="with --mixed: comma-separated, of pump, fan, compressor (default: pump,fan)",
    )
    syn.add_argument("--normal-steps", type=int, default=3000)
    syn.add_argument("--stream-steps", type=int, default=1500)
    syn.add_argument("--anomalies-per-device", type=int, default=2)
    syn.add_argument("--seed", type=int, default=0)
    syn.set_defaults(handler=_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``detector`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
