"""ops/ against the real tools: promtool checks the scrape config and the alert rules (and runs their unit
tests), every expression of the rules and the Grafana dashboard names only metrics the processes export, and
a real Prometheus (Debian's ``prometheus``, installed by ``.ci/run``) scrapes a running node, sees the
completed-workflows counter rise, and evaluates every dashboard and alert expression without error.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import eventstore.metrics as metrics_module
from tests import test_metrics as tm
from tests.apps import runtime_app as app
from tests.processes import wait_until
from tests.stack import running_stack

OPS = Path(__file__).resolve().parent.parent / "ops"
DASHBOARD = OPS / "grafana" / "metamorph.json"
NAME = re.compile(r"\bmetamorph_[a-z0-9_]+")
#: Labels Prometheus adds (target labels) or histogram buckets carry; every other label must be exported.
PROMETHEUS_LABELS = {"job", "instance", "le"}
#: Grafana's variables, as a Prometheus query sees them after substitution.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$workflow_type": ".*", "$activity": ".*"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: install Debian's prometheus package (apt-get install prometheus), "
            "which .ci/run does when it is missing"
        )
    return path


def run_tool(*args: str) -> str:
    proc = subprocess.run([tool(args[0]), *args[1:]], cwd=OPS, capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{out}"
    return out


# -- what the processes export ---------------------------------------------------------------------------
def exported() -> dict[str, set[str]]:
    """Sample name -> label names, for every metamorph_ metric defined in eventstore/metrics.py.

    Counters are registered without ``_total`` as family names; the exposition names are rebuilt here from
    the family type, so ``_total``, ``_created``, ``_bucket``, ``_count`` and ``_sum`` match what Prometheus
    scrapes.
    """
    names: dict[str, set[str]] = {}
    for metric in vars(metrics_module).values():
        if not hasattr(metric, "_labelnames") or not hasattr(metric, "_name"):
            continue
        for family in metric.describe():
            labels = set(metric._labelnames)
            if family.type == "counter":
                suffixes = {"_total": labels, "_created": labels}
            elif family.type == "histogram":
                suffixes = {"_bucket": labels | {"le"}, "_count": labels, "_sum": labels, "_created": labels}
            else:
                suffixes = {"": labels}
            for suffix, ls in suffixes.items():
                names[family.name + suffix] = ls
    return names


def registry_names() -> set[str]:
    """metamorph_ family names in the process-global registry (what /metrics serves); counters without _total."""
    return {f.name for f in REGISTRY.collect() if f.name.startswith("metamorph_")}


def defined_families() -> dict[str, str]:
    """Family name -> type of every metric object in eventstore/metrics.py."""
    return {f.name: f.type for m in vars(metrics_module).values() if hasattr(m, "_labelnames") for f in m.describe()}


# -- the expressions of ops/ -------------------------------------------------------------------------------
def rules() -> list[dict]:
    doc = yaml.safe_load((OPS / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict]:
    out = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", []) if t.get("expr")]
    for var in dashboard()["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict) and query.get("query"):
            exprs.append(query["query"])
    return exprs


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def selector_labels(expr: str) -> dict[str, set[str]]:
    """metric name -> label names used in its ``{...}`` selectors."""
    out: dict[str, set[str]] = {}
    for m in re.finditer(r"\b(metamorph_[a-z0-9_]+)\s*\{([^}]*)\}", expr):
        out.setdefault(m.group(1), set()).update(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", m.group(2)))
    return out


def grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for m in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        labels.update(x.strip() for x in m.group(1).split(",") if x.strip())
    return labels


# -- static checks -----------------------------------------------------------------------------------------
def test_promtool_check_config_and_rules():
    out = run_tool("promtool", "check", "config", "prometheus.yml")
    assert "SUCCESS" in out and "1 rule files found" in out
    out = run_tool("promtool", "check", "rules", "alerts.yml")
    assert re.search(r"SUCCESS: \d+ rules found", out)


def test_alert_rules_unit_tests_pass():
    """ops/alerts_test.yml feeds series into every important rule and checks what fires (and what does not)."""
    assert "SUCCESS" in run_tool("promtool", "test", "rules", "alerts_test.yml")
    cases = [c for t in yaml.safe_load((OPS / "alerts_test.yml").read_text())["tests"] for c in t.get("alert_rule_test", [])]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    alerts = {r["alert"] for r in rules()}
    assert alerts <= fires, f"every alert needs a unit test in ops/alerts_test.yml where it fires: {alerts - fires}"
    assert alerts <= quiet, f"every alert needs a unit test where it does not fire (yet): {alerts - quiet}"


def test_every_metric_name_in_rules_and_dashboard_is_exported():
    names = exported()
    assert names, "eventstore.metrics defines no metrics"
    assert set(defined_families()) <= registry_names(), "every metric of eventstore.metrics is in the default registry"
    used: dict[str, set[str]] = {}
    for where, exprs in (("ops/alerts.yml", [r["expr"] for r in rules()]), (str(DASHBOARD.relative_to(OPS.parent)), dashboard_exprs())):
        for expr in exprs:
            for name in NAME.findall(expr):
                used.setdefault(name, set()).add(where)
    assert used, "no metamorph_ metric used in ops/"
    unknown = {n: sorted(w) for n, w in used.items() if n not in names}
    assert not unknown, f"metrics used in ops/ that no process exports: {unknown}"
    # the whole dashboard file, variables and descriptions included, names nothing else either
    assert set(NAME.findall(DASHBOARD.read_text())) <= set(names)


def test_every_label_in_rules_and_dashboard_is_exported():
    names = exported()
    for expr in [r["expr"] for r in rules()] + dashboard_exprs():
        used_metrics = set(NAME.findall(expr))
        for metric, labels in selector_labels(expr).items():
            assert labels <= names[metric] | PROMETHEUS_LABELS, f"{metric} has no label {labels - names[metric]} ({expr})"
        available = set().union(*(names[m] for m in used_metrics)) | PROMETHEUS_LABELS if used_metrics else PROMETHEUS_LABELS
        assert grouping_labels(expr) <= available, f"grouping by labels no metric has: {grouping_labels(expr) - available} ({expr})"
    for rule in rules():
        for text in rule["annotations"].values():
            for label in re.findall(r"\$labels\.(\w+)", text):
                assert label in available_labels(rule["expr"], names), f"{rule['alert']}: $labels.{label} is not on the result"


def available_labels(expr: str, names: dict[str, set[str]]) -> set[str]:
    by = re.findall(r"\bby\s*\(([^)]*)\)", expr)
    if by:  # aggregated: only the grouping labels survive
        return {x.strip() for x in by[0].split(",")}
    return set().union(*(names.get(m, set()) for m in NAME.findall(expr))) | PROMETHEUS_LABELS


def test_metric_definitions_follow_prometheus_naming():
    names = exported()
    families: dict[str, str] = {}
    for metric in vars(metrics_module).values():
        if hasattr(metric, "_labelnames") and hasattr(metric, "_name"):
            for family in metric.describe():
                families[family.name] = family.type
                assert not {"workflow_id", "run_id", "id", "request_id"} & set(metric._labelnames), family.name
    for name, kind in families.items():
        assert name.startswith("metamorph_"), name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        if kind == "histogram":
            assert name.endswith(("_seconds", "_bytes", "_records")), f"histogram {name} needs a unit suffix"
        if kind == "gauge":
            assert not name.endswith("_total"), name
    # what the issue asks for, by name
    required = {
        "metamorph_workflows_started_total", "metamorph_workflows_closed_total", "metamorph_workflow_duration_seconds_bucket",
        "metamorph_activity_attempts_total", "metamorph_activity_retries_total", "metamorph_activity_duration_seconds_bucket",
        "metamorph_consumer_lag_records", "metamorph_projector_lag_records", "metamorph_projector_batch_duration_seconds_bucket",
        "metamorph_live_workflows", "metamorph_passivated_workflows", "metamorph_timers_pending",
        "metamorph_timer_lateness_seconds_bucket", "metamorph_deadlettered_records_total", "metamorph_commands_consumed_total",
        "metamorph_events_appended_total", "metamorph_replay_duration_seconds_bucket", "metamorph_restore_duration_seconds_bucket",
    }  # fmt: skip
    assert required <= set(names), required - set(names)
    assert {"workflow_type"} <= names["metamorph_workflow_duration_seconds_bucket"]
    assert {"component", "topic", "partition"} <= names["metamorph_consumer_lag_records"]


def test_alerts_cover_the_operational_risks_and_have_a_runbook():
    by_name = {r["alert"]: r for r in rules()}
    for wanted in (
        "MetamorphConsumerLagGrowing", "MetamorphDeadLetteredRecords", "MetamorphWorkflowFailureRatioHigh",
        "MetamorphNodeDown", "MetamorphProjectorBehind", "MetamorphTimersLate",
        # issue 15: monitoring must tell the truth about outages, stalls, truncation, blocks and zombies
        "MetamorphDependencyDown", "MetamorphProjectorStalled", "MetamorphProjectionBug", "MetamorphLogTruncated",
        "MetamorphWorkflowsStillBlocked", "MetamorphStaleMessagesDropped", "MetamorphCommandsRerouted",
    ):  # fmt: skip
        assert wanted in by_name, wanted
    readme = (OPS / "README.md").read_text()
    headings = {h.strip().lower() for h in re.findall(r"^#+\s*(.+)$", readme, re.M)}
    for name, rule in by_name.items():
        ann = rule["annotations"]
        assert ann.get("summary") and len(ann.get("description", "")) > 40, name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert ann["runbook"] == f"ops/README.md#{name.lower()}", name
        assert name.lower() in headings, f"ops/README.md has no runbook section '### {name}'"


def test_dashboard_has_the_panels_operators_need():
    dash = dashboard()
    panels = [p for p in dashboard_panels() if p["type"] != "row"]
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = " | ".join(p["title"].lower() for p in dashboard_panels())  # rows included
    for topic in ("throughput", "latency", "failures", "lag", "live", "passivated", "retries", "timer", "dead-lettered"):
        assert topic in titles, f"no panel about {topic!r}"
    exprs = " ".join(dashboard_exprs())
    assert "histogram_quantile(0.99" in exprs and "histogram_quantile(0.5" in exprs
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p.get("targets"), p["title"]
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
    assert dash["uid"] == "metamorph" and dash["templating"]["list"][0]["type"] == "datasource"


def test_scrape_config_matches_the_example_deployment():
    config = yaml.safe_load((OPS / "prometheus.yml").read_text())
    jobs = {j["job_name"]: [t for sc in j["static_configs"] for t in sc["targets"]] for j in config["scrape_configs"]}
    for job in ("metamorph-node", "metamorph-worker", "metamorph-projector", "metamorph-server"):
        assert jobs.get(job), f"prometheus.yml does not scrape {job}"
    for j in config["scrape_configs"]:  # a `component` target label would rename the metrics' own label
        for sc in j["static_configs"]:
            assert "component" not in sc.get("labels", {}), j["job_name"]
    compose = yaml.safe_load((OPS / "docker-compose.yml").read_text())
    services = compose["services"]
    images = " ".join(s.get("image", "") for s in services.values())
    assert "apache/kafka" in images and "postgres" in images and "prom/prometheus" in images and "grafana/grafana" in images
    command_of = {"metamorph-node": "node", "metamorph-worker": "worker", "metamorph-projector": "projector", "metamorph-server": "serve"}
    for job, cmd in command_of.items():
        for target in jobs[job]:
            host, port = target.rsplit(":", 1)
            service = services.get(host)
            assert service is not None, f"{job} target {target} is not a service of ops/docker-compose.yml"
            argv = service["command"]
            assert argv[0] == cmd and argv[argv.index("--metrics-port") + 1] == port, (job, argv)
            assert service["environment"]["METAMORPH_METRICS_ADDR"] == "0.0.0.0"


# -- a real Prometheus against a running node --------------------------------------------------------------
class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422 carry the error as JSON
            return json.loads(exc.read())

    def query(self, expr: str) -> dict:
        return self.get("/api/v1/query", query=expr)

    def scalar(self, expr: str) -> float:
        body = self.query(expr)
        assert body["status"] == "success", body
        result = body["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0


@contextlib.contextmanager
def prometheus(tmp_path: Path, metrics_port: int) -> Iterator[Prometheus]:
    binary = tool("prometheus")
    port = tm.free_port()
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(OPS / "alerts.yml")],
        "scrape_configs": [{"job_name": "metamorph-node", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        server = Prometheus(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()}"
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()



def test_real_prometheus_scrapes_a_node_and_evaluates_every_expression(kafka_server, pg_server, tmp_path):
    tool("prometheus")  # fail fast, before starting a node, when it is not installed
    port = tm.metrics_port()
    with running_stack(kafka_server.bootstrap, pg_server, tmp_path / "node") as (client, _node, _ns):
        with prometheus(tmp_path / "prom", port) as prom:
            wait_until(lambda: prom.scalar('up{job="metamorph-node"}') == 1, 15, "the first scrape of the node")
            counter = 'sum(metamorph_workflows_closed_total{outcome="completed"})'
            before = prom.scalar(counter)
            for who in ("p1", "p2", "p3"):
                assert client.start(app.Hello, who).result(timeout=20) == f"hello {who}"
            wait_until(lambda: prom.scalar(counter) >= before + 3, 30, f"{counter} to rise by 3 in Prometheus")
            assert prom.scalar('sum(metamorph_workflows_started_total{workflow_type="rt.Hello"})') >= 3
            # rate() needs two samples of a series: wait for one more scrape of the new series
            query = 'min(count_over_time(metamorph_workflows_started_total{workflow_type="rt.Hello"}[1m]))'
            wait_until(lambda: prom.scalar(query) >= 2, 10, "a second sample")

            # Every dashboard and alert expression is valid PromQL for this Prometheus and runs on real data.
            errors = {}
            for expr in dashboard_exprs() + [r["expr"] for r in rules()]:
                promql = grafana_to_promql(expr)
                if promql.startswith("label_values("):
                    metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", promql).groups()
                    body = prom.get(f"/api/v1/label/{label}/values", **{"match[]": metric})
                    assert body["status"] == "success" and body["data"], (promql, body)
                    continue
                body = prom.query(promql)
                if body["status"] != "success":
                    errors[expr] = body.get("error")
            assert not errors, errors
            started = prom.query(grafana_to_promql(next(e for e in dashboard_exprs() if "metamorph_workflows_started_total{" in e)))
            assert any(r["metric"].get("workflow_type") == "rt.Hello" for r in started["data"]["result"])

            # Prometheus loaded ops/alerts.yml and evaluates every rule without error.
            def evaluated():
                groups = prom.get("/api/v1/rules")["data"]["groups"]
                rs = [r for g in groups for r in g["rules"]]
                return rs if rs and all(r.get("lastEvaluation", "").startswith("20") for r in rs) else None

            loaded = wait_until(evaluated, 10, "the alert rules to be evaluated")
            assert {r["name"] for r in loaded} == {r["alert"] for r in rules()}
            assert all(r["health"] == "ok" for r in loaded), [(r["name"], r.get("lastError")) for r in loaded]
