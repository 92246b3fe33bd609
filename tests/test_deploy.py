"""Deployment files under deploy/: valid, consistent with each other and with the code.

No Compose tool, Kubernetes or systemd runs in CI, so these tests check what those would reject
or silently get wrong: the compose file against the Compose Specification schema, host paths that
must exist, ports and names that must agree across files, the detector config shipped in the
ConfigMap, and every metric the dashboard and rules use against the daemon's own metrics.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from detector.config import ENV_PREFIX, DetectorConfig, KafkaConfig
from detector.exits import EXIT_CONFIG, EXIT_UNAVAILABLE
from detector.metrics import DetectorMetrics
from detector.settings import load_settings
from tests.conftest import ROOT
from trainer.cli import build_parser
from trainer.config import TrainerConfig, profile_registry

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "detector.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "detector.yaml"
RULES = DEPLOY / "prometheus" / "rules.yml"
# Opt-in rules: not loaded by prometheus.yml nor applied by kustomization.yaml.
DRIFT_RULES = DEPLOY / "prometheus" / "rules-drift.yml"
K8S = DEPLOY / "k8s"
DRIFT_RULE_K8S = K8S / "prometheusrule-drift.yaml"
UNIT = DEPLOY / "systemd" / "anomaly-detector.service"


def load_yaml(path: Path) -> Any:
    """The single document of a YAML file."""
    return yaml.safe_load(path.read_text())


def k8s_objects() -> dict[str, dict[str, Any]]:
    """Kubernetes objects under deploy/k8s by kind (one of each kind is shipped; the opt-in
    drift rule is left out)."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(set(K8S.glob("*.yaml")) - {DRIFT_RULE_K8S}):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in objects, f"second {doc['kind']} in {path.name}"
            objects[doc["kind"]] = doc
    return objects


def panels_of(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(panels_of(panel.get("panels", [])))
    return found


def test_every_yaml_file_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert len(files) >= 12
    for path in files:
        documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        assert documents, f"{path} holds no YAML document"


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    schema = json.loads((DEPLOY / "schema" / "compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(load_yaml(COMPOSE))
    ]
    assert not errors, "\n".join(errors)
    # The validator must be able to fail: an unknown service key is an error in the spec.
    broken = load_yaml(COMPOSE)
    broken["services"]["detector"]["restart_policy"] = "always"
    assert not validator.is_valid(broken)


def host_paths(compose: dict[str, Any]) -> list[Path]:
    """Every host path the compose file builds from or bind-mounts, resolved from deploy/."""
    paths = []
    for service in compose["services"].values():
        build = service.get("build")
        if build:
            context = DEPLOY / build["context"]
            paths.append(context)
            paths.append(context / build.get("dockerfile", "Dockerfile"))
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                paths.append(DEPLOY / source)
        paths.extend(DEPLOY / name for name in service.get("env_file", []))
    return paths


def test_compose_host_paths_exist() -> None:
    paths = host_paths(load_yaml(COMPOSE))
    assert len(paths) >= 6
    missing = [str(path) for path in paths if not path.exists()]
    assert not missing, f"compose refers to missing files: {missing}"


def test_dockerfile_copies_existing_paths() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    copies = re.findall(r"^COPY\s+(.+)$", dockerfile, flags=re.MULTILINE)
    assert copies
    for line in copies:
        *sources, _destination = [word for word in shlex.split(line) if not word.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"


def test_compose_services_agree_on_names_ports_and_paths() -> None:
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    detector_config = load_yaml(ROOT / "configs" / "detector.yaml")
    # Prometheus scrapes the detector service on the port the detector serves metrics on.
    (job,) = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in services
    assert int(port) == detector_config["metrics"]["port"]
    assert f"{port}:{port}" in services[host]["ports"]
    # Grafana's datasource is the prometheus service; its dashboards folder is the mounted one.
    (datasource,) = load_yaml(DATASOURCES)["datasources"]
    assert re.fullmatch(r"http://prometheus:9090/?", datasource["url"])
    (provider,) = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    grafana_mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    assert grafana_mounts[provider["options"]["path"]] == "./grafana/dashboards"
    assert grafana_mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    # The detector loads from the volume the one-shot trainer writes to, and waits for it.
    model_path = services["detector"]["environment"]["DETECTOR_MODEL__PATH"]
    trainer_mounts = {v.split(":")[1]: v.split(":")[0] for v in services["trainer"]["volumes"]}
    detector_mounts = {v.split(":")[1]: v.split(":")[0] for v in services["detector"]["volumes"]}
    mount = next(m for m in trainer_mounts if model_path.startswith(m + "/"))
    assert detector_mounts[mount] == trainer_mounts[mount]
    assert services["detector"]["depends_on"]["trainer"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["trainer"]["restart"] == "no"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


SERIES_SUFFIXES = {
    "counter": ["_total"],
    "histogram": ["_bucket", "_sum", "_count"],
    "info": ["_info"],
    "gauge": [""],
}


def exposed_metric_names() -> set[str]:
    """Names of the series the daemon's registry exposes (``_total``, ``_bucket``, ``_info``…)."""
    return {
        family.name + suffix
        for family in DetectorMetrics().registry.collect()
        for suffix in SERIES_SUFFIXES[family.type]
    }


def profile_labelled_series() -> set[str]:
    """Series names whose metric carries the ``profile`` label.

    prometheus_client has no public accessor for a metric's label names before it has children;
    ``_name``, ``_type`` and ``_labelnames`` are the attributes every metric wrapper sets.
    """
    metrics = [m for m in vars(DetectorMetrics()).values() if hasattr(m, "_labelnames")]
    found = {
        m._name + suffix
        for m in metrics
        if "profile" in m._labelnames
        for suffix in SERIES_SUFFIXES[m._type]
    }
    assert "detector_windows_scored_total" in found  # the attributes are what this expects
    return found


def dashboard_and_rule_expressions() -> list[str]:
    """Every PromQL expression in the dashboard (targets, variables) and in rules.yml."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in panels_of(dashboard["panels"]) for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"]]
    exprs += [
        rule["expr"]
        for rules in (RULES, DRIFT_RULES)
        for group in load_yaml(rules)["groups"]
        for rule in group["rules"]
    ]
    return exprs


def test_dashboard_and_rules_use_only_metrics_the_daemon_exposes() -> None:
    exposed = exposed_metric_names()
    used = {
        name
        for expr in dashboard_and_rule_expressions()
        for name in re.findall(r"detector_\w+", expr)
    }
    assert not used - exposed, f"unknown metrics: {sorted(used - exposed)}"
    # The panels the README promises, by the metric each needs.
    for needed in (
        "detector_readings_accepted_total",
        "detector_records_rejected_total",
        "detector_consumer_lag",
        "detector_scoring_duration_seconds_bucket",
        "detector_batch_size_bucket",
        "detector_anomaly_score_bucket",
        "detector_alerts_firing",
        "detector_alerts_total",
        "detector_devices_tracked",
        "detector_model_info",
        "detector_scoring_info",
        "detector_score_drift",
        "detector_shadow_info",
        "detector_shadow_alerts_total",
        "detector_shadow_anomaly_score_bucket",
    ):
        assert needed in used, f"dashboard has no panel on {needed}"


SELECTOR = re.compile(r"\b(detector_\w+)(\{[^}]*\})?")


def test_dashboard_filters_profile_labelled_metrics_by_the_profile_variable() -> None:
    # Every metric with a profile label follows the Profile selector; a metric without one must
    # not be filtered by it (profile=~"pump" selects nothing where the label is absent).
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "profile"]
    assert variable["definition"] == "label_values(detector_windows_scored_total, profile)"
    assert variable["multi"] and variable["includeAll"] and variable["allValue"] == ".*"
    labelled = profile_labelled_series()
    wrong = []
    for panel in panels_of(dashboard["panels"]):
        for target in panel.get("targets", []):
            for name, matchers in SELECTOR.findall(target["expr"]):
                filtered = 'profile=~"$profile"' in matchers
                if filtered != (name in labelled):
                    wrong.append(f"{panel['title']}/{target['refId']}: {name}{matchers}")
    assert not wrong, "\n".join(wrong)
    heatmap = next(p for p in panels_of(dashboard["panels"]) if p["type"] == "heatmap")
    assert heatmap["repeat"] == "profile", "one score heatmap per profile (each its own scale)"


def test_every_panel_uses_the_provisioned_datasource() -> None:
    (datasource,) = load_yaml(DATASOURCES)["datasources"]
    uid = datasource["uid"]
    dashboard = json.loads(DASHBOARD.read_text())
    panels = panels_of(dashboard["panels"])
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == uid


def config_environment(container: dict[str, Any]) -> dict[str, str]:
    """The container's DETECTOR_* env as the pod would see it (secret values: a placeholder)."""
    environ = {}
    for item in container.get("env", []):
        if "value" in item:
            environ[item["name"]] = item["value"]
        else:
            environ[item["name"]] = f"<{next(iter(item['valueFrom']))}>"
    return environ


def test_k8s_deployment_probes_config_and_volumes_agree(tmp_path: Path) -> None:
    objects = k8s_objects()
    deployment = objects["Deployment"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]

    config_file = tmp_path / "detector.yaml"
    config_file.write_text(objects["ConfigMap"]["data"]["detector.yaml"])
    # The Secret provides the SASL password through the environment, as in the pod.
    config = load_settings(DetectorConfig, config_file, ENV_PREFIX, config_environment(container))
    assert config.kafka.sasl_password is not None

    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    expected = {
        "livenessProbe": "/healthz",
        "startupProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe, path in expected.items():
        action = container[probe]["httpGet"]
        assert action["path"] == path, probe
        port = action["port"]
        assert ports.get(port, port) == config.metrics.port, probe

    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == config.metrics.port
    assert (
        deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )

    # The config file is where the ConfigMap is mounted, and the model under the models volume.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    config_path = container["args"][container["args"].index("--config") + 1]
    config_volume = next(n for n, v in volumes.items() if "configMap" in v)
    assert volumes[config_volume]["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    assert config_path == f"{mounts[config_volume]}/detector.yaml"
    assert volumes[config_volume]["configMap"]["items"] == [
        {"key": "detector.yaml", "path": "detector.yaml"}
    ]
    models_volume = next(n for n, v in volumes.items() if "persistentVolumeClaim" in v)
    claim = volumes[models_volume]["persistentVolumeClaim"]["claimName"]
    assert claim == objects["PersistentVolumeClaim"]["metadata"]["name"]
    profiles = config.model.profile_map()
    assert profiles
    for profile in profiles.values():
        assert str(profile.path).startswith(mounts[models_volume] + "/")

    # The referenced Secret is the one the example creates.
    (secret_ref,) = [
        e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    secret = objects["Secret"]
    assert secret_ref["name"] == secret["metadata"]["name"]
    assert secret_ref["key"] in secret["stringData"]


def test_k8s_monitoring_matches_the_pods_and_rules() -> None:
    objects = k8s_objects()
    pod = objects["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    monitor = objects["PodMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    port_names = {port["name"] for port in container["ports"]}
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= port_names
    # The operator names the job "<namespace>/<PodMonitor name>": the rules must match that.
    job = f"monitoring/{monitor['metadata']['name']}"
    down = objects["PrometheusRule"]["spec"]["groups"][0]["rules"][0]["expr"]
    pattern = re.search(r'job=~"([^"]+)"', down).group(1)
    assert re.fullmatch(pattern, job) and re.fullmatch(pattern, "anomaly-detector")
    assert objects["PrometheusRule"]["spec"] == load_yaml(RULES), "prometheusrule.yaml drifted"
    drift_rule = load_yaml(DRIFT_RULE_K8S)
    assert drift_rule["spec"] == load_yaml(DRIFT_RULES), "prometheusrule-drift.yaml drifted"
    assert drift_rule["metadata"]["labels"] == objects["PrometheusRule"]["metadata"]["labels"]


def test_the_drift_warning_is_opt_in() -> None:
    """ModelDrift warns on most fresh models (docs/quality.md): shipped, but not loaded."""
    shipped = [rule["alert"] for group in load_yaml(RULES)["groups"] for rule in group["rules"]]
    assert "ModelDrift" not in shipped
    assert load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["rule_files"] == ["rules.yml"]
    assert DRIFT_RULE_K8S.name not in load_yaml(K8S / "kustomization.yaml")["resources"]


def mounted_file(pod_spec: dict[str, Any], container: dict[str, Any], path: str) -> tuple[str, str]:
    """(ConfigMap name, key) of the file at ``path`` in ``container``, from its configMap mounts."""
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    for mount in container["volumeMounts"]:
        source = volumes[mount["name"]].get("configMap")
        directory = mount["mountPath"].rstrip("/") + "/"
        if source and path.startswith(directory):
            name = path[len(directory) :]
            if "items" not in source:
                return source["name"], name  # every key is a file
            keys = {item["path"]: item["key"] for item in source["items"]}
            if name in keys:
                return source["name"], keys[name]
    raise AssertionError(f"{path} is not in a mounted ConfigMap")


def trainer_pods() -> dict[str, dict[str, Any]]:
    """The pod specs of the trainer Job and CronJob, by kind."""
    objects = k8s_objects()
    return {
        "Job": objects["Job"]["spec"]["template"]["spec"],
        "CronJob": objects["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"],
    }


@pytest.mark.parametrize("kind", ["Job", "CronJob"])
def test_k8s_trainer_trains_a_profile_the_detector_loads(kind: str, tmp_path: Path) -> None:
    objects = k8s_objects()
    pod = trainer_pods()[kind]
    (container,) = pod["containers"]
    assert container["args"][0] == "trainer"
    args = build_parser().parse_args(container["args"][1:])  # the trainer's own parser accepts them
    assert args.command == "fit" and args.profile and args.no_progress

    # Both config files come from the shipped ConfigMap and validate.
    configmap = objects["ConfigMap"]
    data = {}
    for option in ("config", "kafka_config"):
        if getattr(args, option) is None:
            continue
        name, key = mounted_file(pod, container, str(getattr(args, option)))
        assert name == configmap["metadata"]["name"], option
        data[option] = configmap["data"][key]
    (tmp_path / "trainer.yaml").write_text(data["config"])
    trainer = load_settings(TrainerConfig, tmp_path / "trainer.yaml", "TRAINER_", {})
    # The detector's config as the daemon sees it (its password from the Deployment's env).
    (tmp_path / "detector.yaml").write_text(configmap["data"]["detector.yaml"])
    (daemon,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    detector = load_settings(
        DetectorConfig, tmp_path / "detector.yaml", ENV_PREFIX, config_environment(daemon)
    )

    # The registry it writes is the one the detector loads that profile from, on the same claim.
    registry = profile_registry(trainer.output, args.profile)
    assert detector.model.profile_map()[args.profile].path == registry
    volumes = {v["name"]: v for v in pod["volumes"]}
    (models,) = [m for m in container["volumeMounts"] if registry.is_relative_to(m["mountPath"])]
    assert not models.get("readOnly")
    claim = volumes[models["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == objects["PersistentVolumeClaim"]["metadata"]["name"]

    # Same pod conventions as the Deployment.
    assert pod["enableServiceLinks"] is False and pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001

    if args.from_kafka:
        # The topic is one the detector reads and routes to this profile; the password comes
        # from the Secret the example creates.
        assert args.kafka_config is not None and not args.exclude_flagged
        # The refit the detector config's retrain section describes, which `detector evaluate`
        # replays: its span, the alert episodes left out, the same gate.
        retrain = detector.retrain
        assert args.since == f"-{retrain.span_s / 86400:g}d"
        assert retrain.exclude == "alerts" and args.exclude_alerts == detector.kafka.alerts_topic
        assert args.promote == retrain.promote
        assert args.from_kafka in detector.kafka.readings_topics
        router = detector.model.router()
        assert router is not None
        assert router.profiles[router.route(args.from_kafka, "any-device")] == args.profile
        (secret_ref,) = [
            e["valueFrom"]["secretKeyRef"]
            for e in container["env"]
            if "secretKeyRef" in e.get("valueFrom", {})
        ]
        assert secret_ref["name"] == objects["Secret"]["metadata"]["name"]
        assert secret_ref["key"] in objects["Secret"]["stringData"]
        environ = config_environment(container)
        assert environ["DETECTOR_KAFKA__SASL_PASSWORD"] == "<secretKeyRef>"
        load_settings(DetectorConfig, tmp_path / "detector.yaml", ENV_PREFIX, environ)


def test_k8s_retraining_cronjob_runs_one_at_a_time_on_the_last_week() -> None:
    cronjob = k8s_objects()["CronJob"]
    spec = cronjob["spec"]
    assert len(spec["schedule"].split()) == 5
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    (container,) = job["template"]["spec"]["containers"]
    # Only an unreachable broker (exit 69) is retried; any other failure fails the Job at once.
    assert job["backoffLimit"] > 0
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy needs it
    (rule,) = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob"
    assert rule["onExitCodes"] == {
        "containerName": container["name"],
        "operator": "NotIn",
        "values": [EXIT_UNAVAILABLE],
    }
    args = build_parser().parse_args(container["args"][1:])
    assert (args.since, args.until, args.promote) == ("-7d", "now", "auto")


def test_kustomization_lists_existing_files() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    # Real secrets never come from the repository.
    assert "secret.example.yaml" not in kustomization["resources"]


def unit_settings(path: Path) -> dict[str, list[str]]:
    """systemd unit ``Key=value`` lines by key (keys may repeat), comments dropped."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_runs_the_daemon_hardened() -> None:
    settings = unit_settings(UNIT)
    (exec_start,) = settings["ExecStart"]
    assert re.search(r"/detector run --config \S+\.yaml$", exec_start)
    assert settings["Restart"] == ["on-failure"]
    # Exit code 2 (bad config or model) must not restart in a loop; 69 (broker unreachable at
    # start-up) must be restarted: on-failure restarts every non-zero code not listed here.
    assert settings["RestartPreventExitStatus"] == [str(EXIT_CONFIG)]
    assert str(EXIT_UNAVAILABLE) not in " ".join(settings["RestartPreventExitStatus"]).split()
    assert "RestartForceExitStatus" not in settings and "SuccessExitStatus" not in settings
    assert settings["User"][0] not in ("", "root")
    assert settings["EnvironmentFile"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
    }.items():
        assert settings[key] == [value], key
    example = (DEPLOY / "systemd" / "detector.env.example").read_text()
    assert "DETECTOR_KAFKA__SASL_PASSWORD=" in example


def unit_seconds(value: str) -> float:
    """A systemd time span such as ``20s``, ``8min`` or ``300`` in seconds."""
    match = re.fullmatch(r"(\d+)\s*(s|sec|min)?", value)
    assert match, value
    return int(match[1]) * (60 if match[2] == "min" else 1)


def test_systemd_unit_retries_an_unreachable_broker_but_not_a_crash_loop() -> None:
    """systemd counts starts in a fixed window of StartLimitIntervalSec from the first one."""
    settings = unit_settings(UNIT)
    (interval,) = (unit_seconds(v) for v in settings["StartLimitIntervalSec"])
    (burst,) = (int(v) for v in settings["StartLimitBurst"])
    (restart,) = (unit_seconds(v) for v in settings["RestartSec"])
    # Against a down broker every start waits the bootstrap timeout, then exits 69: the start
    # after the burst comes after the window has closed, so the unit never gives up on it.
    outage_gap = KafkaConfig().bootstrap_timeout_ms / 1000 + restart
    assert burst * outage_gap > interval + 10
    # A daemon dying at once is started every RestartSec: it reaches the limit and stays failed.
    assert burst * restart < interval
    assert restart >= 5


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.json")), ids=lambda p: p.name)
def test_json_files_parse(path: Path) -> None:
    assert json.loads(path.read_text())
