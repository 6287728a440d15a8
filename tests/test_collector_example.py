"""examples/collector: the collector config, the Grafana provisioning and the dashboard's queries match
the metric names and attributes the SDK really exports.

A child process runs sessions (ended in every state, with openai and anthropic calls against the
loopback LLM server) and exports to a real OTLP receiver; the metrics it received are named the
way the collector's Prometheus exporter names them (tests/prometheus_names.py, a port of the
otlptranslator rules), and every metric, label and span attribute the dashboard's queries use
must be among them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_names
import pytest
import yaml
from llm_server import LLMServer
from otlp_receiver import OTLPReceiver

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "collector"
DASHBOARD = EXAMPLE / "grafana" / "dashboards" / "sessiontrace.json"
PROMQL_WORDS = frozenset(
    {
        "sum", "avg", "min", "max", "count", "rate", "increase", "irate", "histogram_quantile", "by",
        "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "label_values",
        "offset", "bool", "topk", "bottomk", "clamp_min", "clamp_max",
    }
)  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_SELECTOR = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])\s*(\{[^}]*\}|\()?")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_TRACEQL_ATTRIBUTE = re.compile(r"\b(span|resource)\.([a-zA-Z_][a-zA-Z0-9_.]*)")

SCRIPT = textwrap.dedent(
    """
    import os
    import anthropic, openai
    import sdk

    sdk.init(service_name="dashboard", endpoint=os.environ["ENDPOINT"], export_interval=0.05,
             metric_export_interval=60, pricing={"usage-details": {"input": 1.0, "output": 2.0}})
    oai = openai.OpenAI(base_url=os.environ["LLM"] + "/v1", api_key="k", max_retries=0)
    ant = anthropic.Anthropic(base_url=os.environ["LLM"], api_key="k", max_retries=0)
    prompt = [{"role": "user", "content": "hi"}]
    with sdk.session("chat", user_id="u-1"):
        oai.chat.completions.create(model="usage-details", messages=prompt)
        for _ in oai.chat.completions.create(model="gpt-4o-mini", messages=prompt, stream=True,
                                             stream_options={"include_usage": True}):
            pass
        ant.messages.create(model="usage-details", max_tokens=5, messages=prompt)
        oai.embeddings.create(model="text-embedding-3-small", input=["a"])
        try:
            oai.chat.completions.create(model="error-500", messages=prompt)
        except openai.InternalServerError:
            pass
    try:
        with sdk.session("broken", user_id="u-2"):
            raise KeyError("x")
    except KeyError:
        pass
    sdk.end_session(sdk.start_session("given-up"), "indeterminate")
    sdk.start_session("left-open")
    assert sdk.flush()
    print("FLUSHED", flush=True)
    """
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, llm_server: LLMServer) -> Iterator[OTLPReceiver]:
    """A receiver holding what one run of the SDK exported (metrics and spans)."""
    with OTLPReceiver() as receiver:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SESSIONTRACE_"))}
        child = subprocess.run(
            [sys.executable, "-c", SCRIPT],
            env={**env, "ENDPOINT": receiver.url, "LLM": llm_server.url},
            cwd=tmp_path_factory.mktemp("run"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert child.returncode == 0, child.stderr
        assert "FLUSHED" in child.stdout
        yield receiver


def prometheus_series(receiver: OTLPReceiver) -> dict[str, set[str]]:
    """Every Prometheus series name the received metrics become, with its labels: the points'
    attributes, the resource's (resource_to_telemetry_conversion), ``job`` and ``instance``."""
    found: dict[str, set[str]] = {}
    for point in receiver.points:
        made = prometheus_names.series(
            point.name,
            point.unit,
            point.kind,
            bool(point.monotonic),
            set(point.attributes) | set(point.resource),
        )
        for name in made.names:
            found.setdefault(name, {"job", "instance"}).update(made.labels)
    return found


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def targets() -> list[dict[str, Any]]:
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    return [target for panel in panels for target in panel["targets"]]


def promql_uses(expr: str) -> list[tuple[str, set[str], set[str]]]:
    """(metric, labels in its matchers, labels grouped by in the expression) for each selector of `expr`."""
    grouped = {
        label.strip() for group in _GROUPING.findall(expr) for label in group.split(",") if label.strip()
    }
    bare = _RANGE.sub("", _GROUPING.sub("", expr))
    uses = []
    for match in _SELECTOR.finditer(_STRING.sub('""', bare)):
        name, matchers = match.group(1), match.group(2) or ""
        if name in PROMQL_WORDS or matchers == "(":  # an operator or a function
            continue
        uses.append((name, set(_MATCHER.findall(matchers)), grouped))
    return uses


def test_the_translation_port_names_metrics_as_the_collector_does():
    """The naming port gives the names the collector's Prometheus exporter gives (examples from otlptranslator)."""
    names = prometheus_names.metric_name
    assert names("sessiontrace.session.duration", "s", "histogram") == "sessiontrace_session_duration_seconds"
    assert (
        names("sessiontrace.sessions.started", "{session}", "sum", True)
        == "sessiontrace_sessions_started_total"
    )
    assert names("sessiontrace.sessions.open", "{session}", "sum", False) == "sessiontrace_sessions_open"
    assert names("gen_ai.client.inference.usage.input_tokens", "{token}", "sum", True) == (
        "gen_ai_client_inference_usage_input_tokens_total"
    )
    assert names("http.server.request.size", "By", "histogram") == "http_server_request_size_bytes"
    assert names("cpu.utilization", "1", "gauge") == "cpu_utilization_ratio"
    assert names("throughput", "By/s", "gauge") == "throughput_bytes_per_second"
    assert names("llm.cost", "USD", "sum", True) == "llm_cost_USD_total"
    assert names("requests.total", "", "sum", True) == "requests_total"
    assert prometheus_names.label_name("gen_ai.request.model") == "gen_ai_request_model"
    assert prometheus_names.label_name("0day") == "key_0day"


def test_every_dashboard_metric_and_label_is_exported(exported):
    """Every metric a Prometheus query of the dashboard selects is exported, with every label it filters or groups by."""
    series = prometheus_series(exported)
    problems = []
    exprs = [t["expr"] for t in targets() if t["datasource"]["type"] == "prometheus"]
    variable = re.fullmatch(
        r"label_values\((\w+), (\w+)\)", dashboard()["templating"]["list"][0]["definition"]
    )
    assert variable is not None
    exprs.append(f'{variable.group(1)}{{{variable.group(2)}=""}}')  # the $service variable's metric and label
    assert len(exprs) > 15
    for expr in exprs:
        uses = promql_uses(expr)
        assert uses, expr
        names = {name for name, _, _ in uses}
        for name, matched, _ in uses:
            if name not in series:
                problems.append(f"{name}: not exported (in {expr})")
                continue
            problems += [f"{name}: no label {label}" for label in matched - series[name]]
        available = set().union(*(series.get(n, set()) for n in names))
        grouped = uses[0][2]  # the expression's by (...) labels
        problems += [f"{sorted(names)}: no label {label} to group by" for label in grouped - available]
    assert problems == []


def test_every_dashboard_trace_attribute_is_exported(exported):
    """Every span and resource attribute the dashboard's TraceQL queries use is on the exported session spans."""
    span_attributes = {key for span in exported.spans for key in span.attributes}
    resource_attributes = {key for span in exported.spans for key in span.resource}
    queries = [t["query"] for t in targets() if t["datasource"]["type"] == "tempo"]
    assert len(queries) == 4
    used = {(scope, name) for query in queries for scope, name in _TRACEQL_ATTRIBUTE.findall(query)}
    assert {
        ("span", "session.llm.cost_usd"),
        ("span", "session.llm.input_tokens"),
        ("span", "user.id"),
    } <= used
    missing = [
        f"{scope}.{name}"
        for scope, name in used
        if name not in (span_attributes if scope == "span" else resource_attributes)
    ]
    assert missing == []
    roots = [s for s in exported.spans if s.attributes.get("sessiontrace.span.kind") == "session"]
    assert {s.attributes.get("user.id") for s in roots} >= {"u-1", "u-2"}
    assert any(s.attributes.get("session.llm.cost_usd", 0) > 0 for s in roots)
    assert any(s.attributes.get("session.llm.input_tokens", 0) > 0 for s in roots)


def test_the_example_is_wired_together():
    """The collector exports metrics the way the dashboard assumes; Prometheus scrapes it; every panel's
    data source is provisioned; the compose file mounts what Grafana needs."""
    collector = yaml.safe_load((EXAMPLE / "otel-collector.yaml").read_text(encoding="utf-8"))
    exporter = collector["exporters"]["prometheus"]
    assert exporter["translation_strategy"] == "UnderscoreEscapingWithSuffixes"  # what prometheus_names ports
    assert exporter["resource_to_telemetry_conversion"]["enabled"] is True  # service_name as a label
    pipelines = collector["service"]["pipelines"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    assert pipelines["traces"]["exporters"] == ["otlp/tempo"]
    assert set(collector["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    port = exporter["endpoint"].rsplit(":", 1)[1]
    scrape = yaml.safe_load((EXAMPLE / "prometheus.yaml").read_text(encoding="utf-8"))
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == [f"collector:{port}"]
    sources = yaml.safe_load(
        (EXAMPLE / "grafana" / "provisioning" / "datasources" / "datasources.yaml").read_text(
            encoding="utf-8"
        )
    )
    uids = {(s["type"], s["uid"]) for s in sources["datasources"]}
    assert {(t["datasource"]["type"], t["datasource"]["uid"]) for t in targets()} <= uids
    compose = yaml.safe_load((EXAMPLE / "docker-compose.yaml").read_text(encoding="utf-8"))
    assert set(compose["services"]) == {"collector", "tempo", "prometheus", "grafana"}
    mounts = " ".join(compose["services"]["grafana"]["volumes"])
    assert "./grafana/provisioning:" in mounts
    assert "./grafana/dashboards:/var/lib/grafana/dashboards" in mounts
    titles = [p["title"] for p in dashboard()["panels"]]
    assert len(titles) == len(set(titles))
