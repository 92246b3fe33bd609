"""Detector daemon configuration: pydantic models, loaded from YAML with ``DETECTOR_`` overrides.

Example override: ``DETECTOR_KAFKA__BOOTSTRAP_SERVERS=broker:9092``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from detector.core.adaptation import AdaptationRule
from detector.core.admission import AdmissionPolicy
from detector.core.alerts import AlertRule
from detector.core.calibration import CalibrationRule
from detector.core.extremes import ExtremeRule
from detector.core.judge import Judge, JudgeLevels
from detector.core.likelihood import CombinePolicy, LearnPolicy, LikelihoodRule
from detector.core.routing import DEFAULT_PROFILE, Router, RouteRule
from detector.core.thresholds import ThresholdMethod
from detector.settings import load_settings

__all__ = [
    "DEFAULT_PROFILE",
    "ENV_PREFIX",
    "AdaptationConfig",
    "AlertConfig",
    "CalibrationConfig",
    "DetectorConfig",
    "DriftConfig",
    "KafkaConfig",
    "MetricsConfig",
    "ModelConfig",
    "ProfileConfig",
    "RouteConfig",
    "ScoringConfig",
    "WindowConfig",
    "load_config",
]

ENV_PREFIX = "DETECTOR_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")
# host, IPv4 or [IPv6], optional port; kafka-python also drops a leading "<protocol>://".
_SERVER = re.compile(r"(?:[A-Za-z_]+://)?(?:\[[0-9A-Za-z:.%]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?")


def _topic_name(name: str) -> str:
    """Kafka's rule for topic names, checked here so a bad one fails start-up, not an alert."""
    if not _TOPIC.fullmatch(name) or name in (".", ".."):
        raise ValueError(
            "not a legal Kafka topic name: 1 to 249 of a-z A-Z 0-9 . _ - (and not . or ..)"
        )
    return name


def _bootstrap_server(server: str) -> str:
    match = _SERVER.fullmatch(server)
    if match is None or not 0 < int(match.group(1) or 9092) < 65536:
        raise ValueError("expected host:port with a port from 1 to 65535 (or host, port 9092)")
    return server


def _profile_name(name: str) -> str:
    # A metric label value and a directory name under models/.
    if not _PROFILE.fullmatch(name):
        raise ValueError("profile names are 1 to 64 of a-z A-Z 0-9 . _ -")
    return name


_PROFILE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
TopicName = Annotated[str, AfterValidator(_topic_name)]
ProfileName = Annotated[str, AfterValidator(_profile_name)]
BootstrapServer = Annotated[str, AfterValidator(_bootstrap_server)]


class KafkaConfig(_Section):
    """Where readings come from and alerts go, and how the consumer group behaves."""

    client: Literal["kafka-python", "confluent-kafka"] = Field(
        "kafka-python",
        description="the Kafka client library; confluent-kafka (librdkafka) is the confluent extra",
    )
    bootstrap_servers: list[BootstrapServer] = Field(
        default_factory=lambda: ["localhost:9092"], min_length=1
    )
    bootstrap_timeout_ms: int = Field(
        30_000,
        ge=1000,
        description="start-up waits this long for a bootstrap server to answer, then exits 69",
    )
    readings_topics: list[TopicName] = Field(
        default_factory=lambda: ["sensor-readings"], min_length=1
    )
    alerts_topic: TopicName = "sensor-alerts"
    dead_letter_topic: TopicName | None = None
    group_id: str = "anomaly-detector"
    client_id: str = "anomaly-detector"
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_ms: int = Field(10_000, ge=1000)
    heartbeat_interval_ms: int = Field(3_000, ge=100)
    max_poll_interval_ms: int = Field(60_000, ge=1000)
    max_poll_records: int = Field(2_000, ge=1)
    fetch_max_bytes: int = Field(52_428_800, ge=1024)
    max_partition_fetch_bytes: int = Field(1_048_576, ge=1024)
    # Both clients wait out most of a 500 ms hold on Tansu at a modest rate: 50 ms took the p99
    # reading -> alert at 1/4 load from 1.26 to 0.39 s (kafka-python) and 1.37 to 0.41 s
    # (confluent-kafka), bench/RESULTS.md. An idle member then fetches 20 times a second.
    fetch_max_wait_ms: int = Field(
        50, ge=0, description="longest the broker holds a fetch that has no new records yet"
    )
    max_message_bytes: int = Field(
        1_048_576, ge=64, description="larger reading messages are rejected as oversized"
    )
    producer_linger_ms: int = Field(5, ge=0)
    producer_compression: Literal["gzip", "lz4", "zstd", "snappy"] | None = None
    request_timeout_ms: int = Field(30_000, ge=1000)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = Field(
        None, description="read the SASL password from this file (e.g. a mounted secret)"
    )

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _readable_with_tls(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        # kafka-python only opens these on its first connection and then retries forever.
        if path is not None and info.data.get("security_protocol") in ("SSL", "SASL_SSL"):
            try:
                path.open("rb").close()
            except OSError as exc:
                raise ValueError(f"cannot read {path}: {exc.strerror}") from None
        return path

    @model_validator(mode="after")
    def _check_security(self) -> KafkaConfig:
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be below session_timeout_ms")
        if self.sasl_password_file is not None:
            try:
                secret = self.sasl_password_file.read_text().strip()
            except OSError as exc:
                raise ValueError(f"cannot read sasl_password_file: {exc.strerror}") from None
            self.sasl_password = SecretStr(secret)
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism is None:
                raise ValueError(f"sasl_mechanism is required with {self.security_protocol}")
            if self.sasl_username is None or self.sasl_password is None:
                raise ValueError("sasl_username and sasl_password are required with SASL")
        return self


class ProfileConfig(_Section):
    """One device profile: the registry (or artifact) of its model and its own alert settings."""

    path: Path
    expected_features: list[str] | None = Field(
        None, description="refuse to start unless the model's feature order is exactly this"
    )
    alerts: dict[str, Any] | None = Field(
        None, description="alerts fields that replace the top-level ones for this profile"
    )


class RouteConfig(_Section):
    """One routing rule: ``reading: true``, or ``devices``/``device_regex``/``topics`` + ``profile``."""

    reading: bool = Field(False, description="the reading's own profile field decides")
    devices: list[str] | None = Field(None, description="device-id glob patterns (pump-*)")
    device_regex: str | None = Field(None, description="a regular expression for the whole id")
    topics: list[TopicName] | None = None
    profile: ProfileName | None = None

    def rule(self) -> RouteRule:
        """The pure rule (raises ``ValueError`` unless exactly one matcher is given)."""
        given = [
            kind
            for kind, value in (
                ("reading", self.reading or None),
                ("devices", self.devices),
                ("device_regex", self.device_regex),
                ("topics", self.topics),
            )
            if value is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "a route has exactly one of reading, devices, device_regex, topics "
                f"(got {', '.join(given) or 'none'})"
            )
        kind = given[0]
        patterns: tuple[str, ...] = {
            "reading": (),
            "devices": tuple(self.devices or ()),
            "device_regex": (self.device_regex or "",),
            "topics": tuple(self.topics or ()),
        }[kind]
        return RouteRule(kind, patterns, self.profile)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _valid_rule(self) -> RouteConfig:
        self.rule()
        return self


class ModelConfig(_Section):
    """Which models to load: one (``path``), or one per device profile with routing rules.

    ``path`` is an artifact directory or a registry directory whose ``current`` names one; a
    ``candidate`` there is scored in shadow (``shadow``).
    """

    path: Path | None = None
    expected_features: list[str] | None = Field(
        None, description="refuse to start unless the model's feature order is exactly this"
    )
    profiles: dict[ProfileName, ProfileConfig] = Field(default_factory=dict)
    routes: list[RouteConfig] = Field(
        default_factory=list, description="which profile a reading belongs to; first match wins"
    )
    default_profile: ProfileName | None = Field(
        None, description="the profile of readings no route matches (None: unknown_profile)"
    )
    reload_interval_s: float = Field(
        10.0,
        ge=0,
        description="how often to check a registry's current and candidate pointers (0: never)",
    )
    shadow: bool = Field(True, description="score a registry's candidate model in shadow")

    @model_validator(mode="after")
    def _one_form(self) -> ModelConfig:
        if (self.path is None) == (not self.profiles):
            raise ValueError("give either model.path (one model) or model.profiles, not both")
        if self.path is not None and (self.routes or self.default_profile):
            raise ValueError("model.routes and model.default_profile need model.profiles")
        if self.profiles and not self.routes and self.default_profile is None:
            raise ValueError("with model.profiles, give model.routes or model.default_profile")
        if self.profiles:
            self.router()  # routes to unknown profiles, reported as a configuration error
        return self

    def profile_map(self) -> dict[str, ProfileConfig]:
        """Every profile by name; the single-model form is the one profile ``default``."""
        if self.path is not None:
            return {
                DEFAULT_PROFILE: ProfileConfig(
                    path=self.path, expected_features=self.expected_features
                )
            }
        return dict(self.profiles)

    def router(self) -> Router | None:
        """The routing rules over :meth:`profile_map`'s order; ``None`` with one model."""
        if self.path is not None:
            return None
        return Router(
            list(self.profiles), [route.rule() for route in self.routes], self.default_profile
        )


class WindowConfig(_Section):
    """Rolling-window behaviour; the window length itself comes from the model artifact."""

    stride: int = Field(1, ge=1, description="score a device's window every N readings once full")
    max_devices: int = Field(
        1_000_000,
        ge=1,
        description="devices with a window; at the limit a new one replaces the longest-idle one",
    )
    device_idle_timeout_s: float | None = Field(
        3600.0,
        gt=0,
        description="forget a device silent this long, unless firing (None: never); counts only "
        "time with the broker reachable",
    )
    capacity_min_idle_s: float = Field(
        60.0,
        ge=0,
        description="at max_devices a new device replaces one only if it is silent this long",
    )
    out_of_order_grace_s: float = Field(
        5.0, ge=0, description="older readings within this much of the newest are inserted in order"
    )
    max_future_skew_s: float = Field(300.0, ge=0, description="reject readings this far ahead")
    max_gap_s: float | None = Field(
        None, gt=0, description="restart a device's window after a longer silence"
    )
    max_imputed_readings: int = Field(
        3, ge=0, description="consecutive readings whose missing sensors may be filled"
    )
    max_late_readings: int | None = Field(
        10,
        ge=1,
        description="late readings in a row rejected before the window restarts (None: never)",
    )
    rebuild_records: int = Field(
        2000,
        ge=0,
        description="records re-read before the committed offset of a newly assigned partition",
    )

    def policy(self) -> AdmissionPolicy:
        """The pure admission policy these settings describe."""
        return AdmissionPolicy(
            out_of_order_grace_s=self.out_of_order_grace_s,
            max_future_skew_s=self.max_future_skew_s,
            max_gap_s=self.max_gap_s,
            max_imputed_readings=self.max_imputed_readings,
            max_late_readings=self.max_late_readings,
        )


class ScoringConfig(_Section):
    """Micro-batching of ready windows and where the model runs."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_batch_size: int = Field(
        1024,
        ge=1,
        le=65536,
        description="windows per forward pass; warm-up scores one batch of every size up to it",
    )
    max_wait_ms: int = Field(50, ge=0)
    threads: int = Field(
        0,
        ge=0,
        description="CPU: single-threaded workers that score slices of a batch; 0 = one per core",
    )
    artificial_delay_ms: int = Field(
        0, ge=0, description="test hook: sleep this long per batch to simulate a slow model"
    )
    artificial_delay_batches: int | None = Field(
        None, ge=0, description="test hook: only the first N batches are slowed (None: all)"
    )


def _rule_default(rule: type, name: str) -> Any:
    """The default of field ``name`` of the level or alert rule dataclass ``rule``.

    The alert sections read their defaults from the rules, so the two never disagree: a rule
    built from a default section is the rule built with its own defaults.
    """
    for each in dataclasses.fields(rule):
        if each.name == name:
            if each.default is dataclasses.MISSING:
                raise TypeError(f"{rule.__name__}.{name} has no default")
            return each.default
    raise AttributeError(f"{rule.__name__} has no field {name!r}")


class CalibrationConfig(_Section):
    """Per-device thresholds fitted on each device's first windows (off while ``windows`` is 0).

    Defaults: :class:`~detector.core.calibration.CalibrationRule`'s.
    """

    windows: int = Field(0, ge=0, description="first N windows of a device to calibrate on")
    method: ThresholdMethod = _rule_default(CalibrationRule, "method")
    quantile: float = Field(_rule_default(CalibrationRule, "quantile"), gt=0, lt=1)
    k: float = Field(
        _rule_default(CalibrationRule, "k"), gt=0, description="mean_std: mean + k * std"
    )
    margin: float = Field(_rule_default(CalibrationRule, "margin"), gt=0)
    risk: float = Field(
        _rule_default(CalibrationRule, "risk"),
        gt=0,
        lt=1,
        description="pot: tail probability of the threshold",
    )
    init_quantile: float = Field(
        _rule_default(CalibrationRule, "init_quantile"),
        gt=0,
        lt=1,
        description="pot: where the tail starts",
    )
    min_ratio: float = Field(
        _rule_default(CalibrationRule, "min_ratio"),
        gt=0,
        le=1,
        description="floor, x the artifact threshold",
    )
    max_ratio: float = Field(
        _rule_default(CalibrationRule, "max_ratio"),
        ge=1,
        description="cap, x the artifact threshold",
    )

    def rule(self) -> CalibrationRule | None:
        """The pure rule, or ``None`` when calibration is off."""
        if self.windows == 0:
            return None
        return CalibrationRule(**self.model_dump())

    @model_validator(mode="after")
    def _valid_rule(self) -> CalibrationConfig:
        if self.windows:
            self.rule()  # the rule's own checks, reported as a configuration error
        return self


class AdaptationConfig(_Section):
    """A device's threshold follows the median of its recent scores (off while ``windows`` is 0).

    Defaults: :class:`~detector.core.adaptation.AdaptationRule`'s.
    """

    windows: int = Field(
        _rule_default(AdaptationRule, "windows"),
        ge=0,
        description="recent scores per device whose median scales its threshold (0: off)",
    )
    max_ratio: float = Field(
        _rule_default(AdaptationRule, "max_ratio"),
        ge=1,
        description="the threshold is raised at most this much",
    )

    def rule(self) -> AdaptationRule | None:
        """The pure rule, or ``None`` when adaptation is off."""
        if self.windows == 0:
            return None
        return AdaptationRule(**self.model_dump())

    @model_validator(mode="after")
    def _valid_rule(self) -> AdaptationConfig:
        if self.windows:
            self.rule()
        return self


class LikelihoodConfig(_Section):
    """Each device judged against its own recent scores (off while ``windows`` is 0).

    Defaults: :class:`~detector.core.likelihood.LikelihoodRule`'s.
    """

    windows: int = Field(
        _rule_default(LikelihoodRule, "windows"),
        ge=0,
        description="recent scores per device whose distribution sets its level (0: off)",
    )
    tail: float = Field(
        _rule_default(LikelihoodRule, "tail"),
        gt=0,
        lt=0.5,
        description="a window is over when its tail probability is below this",
    )
    prior_windows: int = Field(
        _rule_default(LikelihoodRule, "prior_windows"),
        ge=1,
        description="the model's validation scores count as this many windows",
    )
    min_scale: float = Field(
        _rule_default(LikelihoodRule, "min_scale"),
        gt=0,
        description="least spread of a device's log-scores (ln units)",
    )
    learn: LearnPolicy = Field(
        _rule_default(LikelihoodRule, "learn"),
        description="windows that join the history: all | calm (not over, not firing)",
    )
    spread_quantile: float = Field(
        _rule_default(LikelihoodRule, "spread_quantile"),
        gt=0,
        lt=1,
        description="the log-score quantile whose distance from the median gives the spread "
        "(0.16: the lower half, untouched by anomalies; 0.9: the upper half, heavy tails)",
    )
    min_error_share: float = Field(
        _rule_default(LikelihoodRule, "min_error_share"),
        ge=0,
        description="judge with the likelihood only models whose validation error is at least "
        "this share of the data's variance (1: they reconstruct nothing; 0: every model)",
    )
    combine: CombinePolicy = Field(
        _rule_default(LikelihoodRule, "combine"),
        description="replace: the device's level alone; max: the higher of it and the "
        "model's threshold",
    )

    def rule(self) -> LikelihoodRule | None:
        """The pure rule, or ``None`` when the likelihood is off."""
        if self.windows == 0:
            return None
        return LikelihoodRule(**self.model_dump())

    @model_validator(mode="after")
    def _valid_rule(self) -> LikelihoodConfig:
        if self.windows:
            self.rule()
        return self


class ExtremesConfig(_Section):
    """A window whose newest reading is a new extreme of its device's range pages (off while
    ``windows`` is 0; :mod:`detector.core.extremes`).

    Defaults: :class:`~detector.core.extremes.ExtremeRule`'s, but off.
    """

    windows: int = Field(
        0,
        ge=0,
        description="windows that build a device's range before it judges (0: off)",
    )
    margin: float = Field(
        _rule_default(ExtremeRule, "margin"),
        ge=0,
        description="a reading beyond the range by more than this share of it is an extreme",
    )

    def rule(self) -> ExtremeRule | None:
        """The pure rule, or ``None`` when it is off."""
        if self.windows == 0:
            return None
        return ExtremeRule(**self.model_dump())


class AlertConfig(_Section):
    """When a device starts and stops firing, and the level rules its windows are judged by.

    Defaults: :class:`~detector.core.alerts.AlertRule`'s.
    """

    fire_k: int = Field(
        _rule_default(AlertRule, "fire_k"),
        ge=1,
        description="fire when k of the last n windows are over threshold",
    )
    fire_n: int = Field(_rule_default(AlertRule, "fire_n"), ge=1, le=62)
    resolve_after: int = Field(
        _rule_default(AlertRule, "resolve_after"),
        ge=1,
        description="resolve after N consecutive clear windows",
    )
    resolve_ratio: float = Field(
        _rule_default(AlertRule, "resolve_ratio"),
        gt=0,
        le=1,
        description="a window is clear when score <= ratio x threshold",
    )
    cooldown: int = Field(
        _rule_default(AlertRule, "cooldown"),
        ge=0,
        description="windows after a resolve with no new firing",
    )
    top_sensors: int = Field(3, ge=1)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    adaptation: AdaptationConfig = Field(default_factory=AdaptationConfig)
    likelihood: LikelihoodConfig = Field(default_factory=LikelihoodConfig)
    extremes: ExtremesConfig = Field(default_factory=ExtremesConfig)

    @model_validator(mode="after")
    def _k_le_n(self) -> AlertConfig:
        if self.fire_k > self.fire_n:
            raise ValueError(f"fire_k ({self.fire_k}) must not exceed fire_n ({self.fire_n})")
        return self

    def rule(self) -> AlertRule:
        """The pure alert rule these settings describe."""
        return AlertRule(
            self.fire_k, self.fire_n, self.resolve_after, self.resolve_ratio, self.cooldown
        )

    def judge(self, levels: JudgeLevels) -> Judge:
        """A fleet's judge for a model with these ``levels`` (:func:`judge_levels`)."""
        return Judge(
            self.rule(),
            levels.threshold,
            self.calibration.rule(),
            self.adaptation.rule(),
            levels.reference_score,
            self.likelihood.rule(),
            levels.prior,
            levels.error_share,
            self.extremes.rule(),
            levels.input_range,
        )


class RetrainConfig(_Section):
    """Scheduled refits on what the detector has seen: ``detector evaluate`` replays them.

    Every ``every_s`` seconds of data (and at least ``min_new_rows`` new readings), a candidate
    is fitted by the trainer's own code, with the settings the current model recorded, on the
    last ``span_s`` seconds the detector has seen, less the readings inside its alert episodes
    (``exclude: alerts``); it replaces the current model only if it flags no more held-out
    normal windows (``promote: auto``). deploy/k8s/trainer-cronjob.yaml runs the same refit
    (``trainer fit --since=-<span> --exclude-alerts TOPIC --promote auto``) on its own cron
    schedule, which should match ``every_s``. ``flagged`` instead leaves out every window over
    the model's own threshold, which also leaves out a normal that moved on for good.
    """

    every_s: float = Field(
        0.0, ge=0, description="refit every this many seconds of data (0: never, a frozen model)"
    )
    span_s: float = Field(
        7 * 86400.0, gt=0, description="a refit trains on the last this many seconds seen"
    )
    min_new_rows: int = Field(
        1000, ge=1, description="readings seen since the last refit before the next one"
    )
    warm_start: bool = Field(
        False, description="fine-tune the current model's weights instead of a fresh fit"
    )
    exclude: Literal["alerts", "flagged", "none"] = Field(
        "alerts",
        description="rows a refit leaves out: alerts, those inside the detector's alert "
        "episodes (trainer fit --exclude-alerts TOPIC); flagged, those of windows the current "
        "model scores over its artifact threshold (trainer fit --exclude-flagged); none",
    )
    promote: Literal["auto", "always"] = Field(
        "auto",
        description="auto: swap in only a refit that flags no more held-out normal windows",
    )

    @property
    def enabled(self) -> bool:
        """Whether refits are scheduled at all."""
        return self.every_s > 0


class DriftConfig(_Section):
    """Drift watch: recent live scores per profile against the model's validation scores."""

    windows: int = Field(
        5000, ge=0, description="recent scores per profile, firing devices left out (0: off)"
    )
    min_windows: int = Field(
        1000, ge=1, description="scores needed before the drift is reported (NaN until then)"
    )

    @model_validator(mode="after")
    def _enough(self) -> DriftConfig:
        if self.windows and self.min_windows > self.windows:
            raise ValueError("drift.min_windows must not exceed drift.windows")
        return self


class MetricsConfig(_Section):
    """Prometheus endpoint, plus /healthz and /readyz on the same port."""

    host: str = "0.0.0.0"
    port: int = Field(9108, ge=0, le=65535)
    liveness_timeout_s: float = Field(
        60.0, gt=0, description="/healthz fails after this long stuck"
    )
    max_connections: int = Field(
        32, ge=1, le=1000, description="open HTTP connections; a new one closes the oldest"
    )
    idle_timeout_s: float = Field(
        5.0, gt=0, description="close a connection that sends or reads nothing for this long"
    )
    exposition_cache_s: float = Field(
        1.0, ge=0, description="/metrics answers with the same page for this long (0: off)"
    )


class DetectorConfig(_Section):
    """Everything the daemon needs; see configs/detector.yaml for an annotated example."""

    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    model: ModelConfig
    windows: WindowConfig = Field(default_factory=WindowConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    alerts: AlertConfig = Field(default_factory=AlertConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    commit_interval_ms: int = Field(1000, ge=0)

    @model_validator(mode="after")
    def _profile_alerts(self) -> DetectorConfig:
        for name in self.model.profiles:
            try:
                self.alerts_for(name)
            except ValueError as exc:
                raise ValueError(f"model.profiles.{name}.alerts: {exc}") from None
        return self

    def alerts_for(self, profile: str) -> AlertConfig:
        """The alert settings of ``profile``: the top-level ones with its overrides applied."""
        override = self.model.profile_map()[profile].alerts
        if not override:
            return self.alerts
        return AlertConfig.model_validate(_merged(self.alerts.model_dump(), override))


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override``'s values, section by section (nested mappings merge too)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: Path | None) -> DetectorConfig:
    """Load and validate the daemon configuration; raises ``ConfigError`` naming bad fields."""
    return load_settings(DetectorConfig, path, ENV_PREFIX)
