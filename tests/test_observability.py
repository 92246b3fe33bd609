"""The Grafana dashboard and Prometheus rules, checked by promtool and on a real Prometheus.

Every PromQL expression shipped in deploy/ is run against a Prometheus that scrapes a running
daemon fed a replayed stream, so a renamed metric, a typo in a label or a query that parses but
selects nothing fails here instead of showing an empty panel or a silent alert in production.
Needs the ``prometheus`` and ``promtool`` binaries (Debian: ``apt-get install prometheus``;
.ci/run installs them); without them these tests skip and say so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from detector.core.artifact import load_artifact, set_candidate, set_current
from detector_devtools.embedded_broker import free_port
from detector_devtools.replay import encode_messages, interleave
from tests.conftest import ROOT, DemoData, Topics, copy_version, produce, wait_until

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
DRIFT_RULES = PROMETHEUS_DIR / "rules-drift.yml"  # opt-in, checked here like the rest
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "detector.json"
# What Grafana would put in for the dashboard's variables: a test run is shorter than any real
# $__rate_interval, and 1m still covers every scrape of it (1 s interval).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*", "$profile": ".*"}
# Alerts a healthy daemon must not raise. AlertStorm is left out on purpose: replaying a stream
# with injected anomalies in seconds is, by rate, exactly what a storm looks like. ModelDrift too:
# that stream's scores, anomalies included, may well be far from the validation distribution.
QUIET_WHEN_HEALTHY = {
    "DetectorDown",
    "DetectorNoProgress",
    "ConsumerLagGrowing",
    "RejectedRatioHigh",
    "AlertPublishFailing",
}
COMPARISON = re.compile(r"\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?-?[0-9][0-9.]*(?:e[+-]?[0-9]+)?")


def find_binary(name: str) -> str | None:
    """``name`` on PATH, else Debian's location (/usr/bin is not on every service's PATH)."""
    found = shutil.which(name)
    if found:
        return found
    fallback = Path("/usr/bin") / name
    return str(fallback) if fallback.is_file() else None


def required_binary(name: str) -> str:
    """Path of a Prometheus binary, or skip the test that needs it."""
    binary = find_binary(name)
    if binary is None:
        pytest.skip(f"{name} not found on PATH or in /usr/bin (Debian: apt-get install prometheus)")
    return binary


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of promtool, or skip."""
    return required_binary("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """Path of prometheus, or skip."""
    return required_binary("prometheus")


def dashboard_queries(panels: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(panel title/refId, expr, legend) of every target, including panels in collapsed rows."""
    queries = []
    for panel in panels:
        for target in panel.get("targets", []):
            if target.get("expr"):
                name = f"{panel['title']}/{target['refId']}"
                queries.append((name, target["expr"], target.get("legendFormat", "")))
        queries.extend(dashboard_queries(panel.get("panels", [])))
    return queries


def alerting_rules() -> list[dict[str, Any]]:
    """Every rule of rules.yml and the opt-in rules-drift.yml."""
    groups = [
        g for path in (RULES, DRIFT_RULES) for g in yaml.safe_load(path.read_text())["groups"]
    ]
    return [rule for group in groups for rule in group["rules"]]


def substitute(expr: str) -> str:
    """The query Grafana would send: variables replaced as in GRAFANA_VARIABLES."""
    # Longest names first, so "$__rate_interval" is not eaten by a shorter variable.
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    return expr


def without_comparisons(expr: str) -> str:
    """An alert expression minus its comparisons with constants: the values it alerts on."""
    return COMPARISON.sub("", expr)


def test_without_comparisons_keeps_the_measured_values() -> None:
    assert without_comparisons('up{job=~"x"} == 0') == 'up{job=~"x"}'
    assert without_comparisons("a / b\n  > 0.05") == "a / b"
    assert without_comparisons("deriv(x[10m]) > 0\nand sum(x) > 1e4") == "deriv(x[10m])\nand sum(x)"
    assert without_comparisons('y{a!="1"} >= bool 3') == 'y{a!="1"}'


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """promtool in the rules directory (rule_files paths are relative to it)."""
    return subprocess.run(
        [promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60
    )


def test_promtool_accepts_rules_and_config(promtool: str) -> None:
    rules = run_promtool(promtool, "check", "rules", RULES.name, DRIFT_RULES.name)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    found = [int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", rules.stdout)]
    assert sum(found) == len(alerting_rules()) and len(found) == 2, rules.stdout
    config = run_promtool(promtool, "check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_rule_unit_tests_pass(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tested = {
        case["alertname"]
        for test in yaml.safe_load((PROMETHEUS_DIR / "rules_test.yml").read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    assert tested == {rule["alert"] for rule in alerting_rules()}, "every alert has a unit test"


class PrometheusAPI:
    """The few calls of the Prometheus HTTP API the test needs."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def get(self, path: str, **params: str) -> dict[str, Any]:
        """GET ``path`` and decode the JSON answer (errors come back as JSON with status=error)."""
        url = f"{self.base_url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def query(self, expr: str) -> dict[str, Any]:
        """An instant query at now."""
        return self.get("/api/v1/query", query=expr)

    def scalar(self, expr: str) -> float | None:
        """The value of a one-sample query, None when there is none (yet)."""
        answer = self.query(expr)
        result = answer.get("data", {}).get("result", [])
        return float(result[0]["value"][1]) if answer["status"] == "success" and result else None

    def ready(self) -> bool:
        """Whether /-/ready answers 200."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False


@contextmanager
def running_prometheus(binary: str, config: Path, workdir: Path) -> Iterator[PrometheusAPI]:
    """Prometheus on a free loopback port with storage in ``workdir``; stopped on exit."""
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        api = PrometheusAPI(f"http://127.0.0.1:{port}")
        try:
            deadline = time.monotonic() + 30
            while not api.ready():
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"Prometheus did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.1)
            yield api
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def scrape_config(template: Path, target: str, out: Path) -> Path:
    """deploy/prometheus/prometheus.yml with the daemon as target and 1 s intervals."""
    config = yaml.safe_load(template.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(RULES), str(DRIFT_RULES)]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    out.write_text(yaml.safe_dump(config))
    return out


@pytest.mark.integration
def test_every_dashboard_and_rule_query_returns_data(
    prometheus_binary: str,  # first: without Prometheus, skip before training and broker start
    tmp_path: Path,
    topics: Topics,
    demo_data: DemoData,
    start_daemon,
) -> None:
    # A candidate in shadow, so the shadow panels have data too.
    registry = tmp_path / "models"
    copy_version(registry, demo_data.model.path, "v1", 1.0)
    copy_version(registry, demo_data.model.path, "v2", 0.5)
    set_current(registry, "v1")
    set_candidate(registry, "v2")
    daemon = start_daemon(DETECTOR_MODEL__PATH=str(registry))
    config = scrape_config(
        PROMETHEUS_DIR / "prometheus.yml", f"127.0.0.1:{daemon.metrics_port}", tmp_path / "p.yml"
    )
    job = yaml.safe_load(config.read_text())["scrape_configs"][0]["job_name"]
    readings = demo_data.anomalous.readings
    messages = [*encode_messages(interleave(readings)), (b"dev-x", b"\x00\xffnot json")]
    window = load_artifact(demo_data.model.path).metadata.window_length
    windows = len(readings) - readings["device_id"].nunique() * (window - 1)

    with running_prometheus(prometheus_binary, config, tmp_path) as prom:
        # A first scrape before the stream, so rates have a starting point.
        wait_until(lambda: prom.scalar(f'up{{job="{job}"}}') == 1, 30, "daemon scraped", 0.25)
        produce(topics.bootstrap, topics.readings, messages)
        wait_until(
            lambda: prom.scalar("sum(detector_windows_scored_total)") == windows,
            60,
            f"Prometheus saw all {windows} windows scored",
            0.25,
        )
        # deriv() and rate() need two samples of the lag gauge, which appears with the first poll.
        wait_until(
            lambda: (prom.scalar("min(count_over_time(detector_consumer_lag[1m]))") or 0) >= 2,
            15,
            "two samples of consumer lag",
            0.25,
        )
        rules = {rule["alert"]: rule for rule in alerting_rules()}

        def rules_evaluated() -> bool:
            groups = prom.get("/api/v1/rules")["data"]["groups"]
            loaded = [rule for group in groups for rule in group["rules"]]
            return {rule["name"] for rule in loaded} == set(rules) and all(
                rule["health"] == "ok" for rule in loaded
            )

        wait_until(rules_evaluated, 15, "every rule loaded and evaluated without error", 0.25)

        failures = []
        panels = json.loads(DASHBOARD.read_text())["panels"]
        queries = dashboard_queries(panels)
        for name, expr, legend in queries:
            query = substitute(expr)
            assert "$" not in query, f"{name}: unknown dashboard variable in {expr!r}"
            answer = prom.query(query)
            if answer["status"] != "success":
                failures.append(f"dashboard {name}: {answer.get('error')}: {query}")
                continue
            result = answer["data"]["result"]
            if not result:
                failures.append(f"dashboard {name}: no data: {query}")
            # "sum by (reasn)" still returns data, but the legend {{reason}} would be blank.
            for label in re.findall(r"{{\s*(\w+)\s*}}", legend):
                if any(label not in series["metric"] for series in result):
                    failures.append(f"dashboard {name}: legend label {label!r} not in result")

        for alert, rule in rules.items():
            answer = prom.query(rule["expr"])
            if answer["status"] != "success":
                failures.append(f"rule {alert}: {answer.get('error')}")
                continue
            if alert in QUIET_WHEN_HEALTHY and answer["data"]["result"]:
                failures.append(f"rule {alert}: fires on a healthy daemon: {answer['data']}")
            inner = without_comparisons(rule["expr"])
            measured = prom.query(inner)
            if measured["status"] != "success" or not measured["data"]["result"]:
                failures.append(f"rule {alert}: measured value has no data: {inner}")

        variable_failures = []
        for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"])
            assert match, f"variable {variable['name']}: unsupported query {variable['definition']}"
            selector, label = match.groups()
            values = prom.get(f"/api/v1/label/{label}/values", **{"match[]": selector})["data"]
            if f"127.0.0.1:{daemon.metrics_port}" not in values and label == "instance":
                variable_failures.append(f"variable {variable['name']}: {values}")
            elif not values:
                variable_failures.append(f"variable {variable['name']}: no values")

    assert not failures + variable_failures, "\n".join(failures + variable_failures)
    # Guards against the walk silently finding nothing (e.g. a changed panel layout).
    assert len(queries) >= 20 and len(rules) >= 5
    assert daemon.metric('detector_records_rejected_total{reason="unparsable"}') == 1
