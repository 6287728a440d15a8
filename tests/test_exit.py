"""What happens at interpreter exit, tested on real child processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from sdk.export.jsonl import read_otlp_json_spans

pytestmark = pytest.mark.subprocess


def run(
    script: str, cwd: Path, timeout: float = 60, **env: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run `python -c script` in `cwd` with no SESSIONTRACE_*/OTEL_* variables but `env`; return it and its wall time."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONTRACE_", "OTEL_"))}
    child_env.update(env)
    started = time.monotonic()
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=cwd,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return child, time.monotonic() - started


def attrs(span: dict[str, Any]) -> dict[str, Any]:
    return {kv["key"]: next(iter(kv["value"].values())) for kv in span.get("attributes", ())}


def spans_in(cwd: Path) -> list[dict[str, Any]]:
    return read_otlp_json_spans(cwd / ".sessiontrace" / "traces")


def test_auto_session_ends_success_at_normal_exit(tmp_path):
    """A script with auto_start_session=True that ends normally leaves its auto session exported as `success`."""
    child, _ = run(
        """
        import sdk

        @sdk.tool
        def double(x):
            return 2 * x

        sdk.init(auto_start_session=True, service_name="exit-tests")
        print(double(21))
        print("AUTO", sdk.current_session().id)
        """,
        tmp_path,
    )
    assert child.returncode == 0, child.stderr
    auto_id = child.stdout.split("AUTO ")[1].strip()
    assert child.stdout.startswith("42\n")

    spans = spans_in(tmp_path)
    (auto,) = [s for s in spans if attrs(s).get("session.auto")]
    assert attrs(auto)["session.id"] == auto_id
    assert attrs(auto)["session.state"] == "success"
    (tool,) = [s for s in spans if s["name"] == "execute_tool double"]
    assert attrs(tool)["session.id"] == auto_id
    assert tool["parentSpanId"] == auto["spanId"]
    assert f"sessiontrace: session 'auto' {auto_id} success" in child.stderr


CRASHING = """
import os
if os.environ.get("WITH_SDK"):
    import sdk
    sdk.init(auto_start_session=True)
    print("AUTO", sdk.current_session().id, flush=True)

def handler():
    raise RuntimeError("boom")

print("before", flush=True)
handler()
"""


def test_uncaught_exception_fails_the_auto_session_and_keeps_traceback_and_exit_code(tmp_path):
    """An uncaught exception ends the auto session `fail`; exit code and traceback are exactly those without the SDK."""
    plain, _ = run(CRASHING, tmp_path)
    traced, _ = run(CRASHING, tmp_path, WITH_SDK="1")

    assert plain.returncode == 1
    assert traced.returncode == plain.returncode
    assert plain.stderr.startswith("Traceback (most recent call last):")
    assert plain.stderr.rstrip().endswith("RuntimeError: boom")
    assert traced.stderr.startswith(plain.stderr)
    extra = traced.stderr[len(plain.stderr) :].splitlines()
    assert all(line.startswith("sessiontrace: ") for line in extra), extra
    auto_id = traced.stdout.split("AUTO ")[1].split()[0]
    assert traced.stdout.replace(f"AUTO {auto_id}\n", "") == plain.stdout

    (auto,) = [s for s in spans_in(tmp_path) if attrs(s).get("session.auto")]
    assert attrs(auto)["session.id"] == auto_id
    assert attrs(auto)["session.state"] == "fail"
    assert attrs(auto)["session.end_reason"] == "uncaught RuntimeError"
    assert auto["status"]["code"] == 2


def test_explicit_session_left_open_ends_indeterminate(tmp_path):
    """A session started with start_session() and never ended is ended `indeterminate` at exit, and exported."""
    child, _ = run(
        """
        import sdk

        sdk.init()
        s = sdk.start_session("left-open", user_id="u-1")
        with sdk.session("closed") as c:
            pass
        print(s.id, c.id)
        """,
        tmp_path,
    )
    assert child.returncode == 0, child.stderr
    open_id, closed_id = child.stdout.split()
    spans = {attrs(s)["session.id"]: s for s in spans_in(tmp_path) if "parentSpanId" not in s}
    assert attrs(spans[open_id])["session.state"] == "indeterminate"
    assert attrs(spans[open_id])["session.end_reason"] == "process exit"
    assert attrs(spans[closed_id])["session.state"] == "success"


def test_exit_is_bounded_by_flush_timeout_when_backend_hangs(tmp_path, receiver):
    """With the backend hanging at exit, the process exits within flush_timeout (plus margin) and spools what it could not send."""
    receiver.hang()
    child, wall = run(
        """
        import atexit, dataclasses, json, time
        import sdk

        # Registered before init(), so it runs after the SDK's exit handler.
        atexit.register(lambda: print("STATS", json.dumps(sdk.stats()._asdict()), time.monotonic()))
        sdk.init(flush_timeout=1, auto_start_session=True)  # export_timeout stays at 10 s
        with sdk.session("work"):
            pass
        print("END", time.monotonic(), flush=True)
        """,
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
    )
    assert child.returncode == 0, child.stderr
    assert wall < 1 + 4, f"child took {wall:.1f}s with flush_timeout=1"
    assert receiver.wait_for_requests(1, timeout=0)  # the export did reach the hanging backend
    script_end = float(child.stdout.split("END ")[1].split()[0])
    stats_line = child.stdout.split("STATS ")[1]
    stats = json.loads(stats_line[: stats_line.rindex("}") + 1])
    exit_handler_done = float(stats_line[stats_line.rindex("}") + 1 :])
    assert exit_handler_done - script_end < 1 + 1
    assert stats["spans_exported"] == 0
    # The session and the auto session: kept in the spool for the next process (docs/export.md).
    assert stats["spans_spooled"] == stats["spans_ended"] == 2
    assert stats["spans_dropped"] == 0
    assert "spool" in child.stderr  # one warning says where they are kept
    assert "Traceback" not in child.stderr


DISABLED = """
import asyncio, dataclasses, json, os
import sdk

settings = {} if os.environ.get("OTEL_SDK_DISABLED") else {"enabled": False}
config = sdk.init(auto_start_session=True, **settings)

@sdk.tool
def add_one(x):
    sdk.event("adding", x=x)
    return x + 1

@sdk.agent
def agent(x):
    return add_one(x)

@sdk.task
async def fetch():
    return "fetched"

@sdk.workflow
def numbers():
    yield 1
    yield 2

with sdk.session("chat", user_id="u-1", tags=["t"]) as s:
    assert sdk.current_session() is s
    assert agent(1) == 2
    assert asyncio.run(fetch()) == "fetched"
    assert list(numbers()) == [1, 2]
    sdk.event("outside-a-span")
explicit = sdk.start_session("explicit")
sdk.end_session(explicit, "fail", reason="test")
sdk.end_session(explicit)  # a no-op
assert sdk.flush()
print(json.dumps({
    "enabled": config.enabled,
    "states": [s.state.value, explicit.state.value],
    "ids": [s.id, explicit.id],
    "stats": sdk.stats()._asdict(),
}))
"""


@pytest.mark.parametrize("how", ["OTEL_SDK_DISABLED", "init(enabled=False)"])
@pytest.mark.parametrize("endpoint", [True, False], ids=["with-endpoint", "no-endpoint"])
def test_disabled_sdk_keeps_the_api_working_and_exports_nothing(tmp_path, receiver, how, endpoint):
    """Disabled (OTEL_SDK_DISABLED=true or init(enabled=False)): the same API works and nothing is written or exported."""
    env = {"OTEL_SDK_DISABLED": "true"} if how == "OTEL_SDK_DISABLED" else {}
    if endpoint:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.url
    child, _ = run(DISABLED, tmp_path, **env)
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    assert result["enabled"] is False
    assert result["states"] == ["success", "fail"]
    assert all(len(i) == 32 for i in result["ids"])
    assert result["stats"]["spans_exported"] == 0
    assert result["stats"]["spans_dropped"] == 0
    assert result["stats"]["internal_errors"] == 0
    assert list(tmp_path.iterdir()) == []
    assert receiver.requests == []
    # No log line, warning, summary or traceback.
    assert child.stderr == ""


def test_disabled_sdk_prints_no_summary(tmp_path):
    """Disabled with no endpoint (where summaries would be on by default), no session summary is printed either."""
    child, _ = run(DISABLED, tmp_path, OTEL_SDK_DISABLED="true")
    assert child.returncode == 0, child.stderr
    assert child.stderr == ""


def test_the_applications_span_processors_are_shut_down_at_exit(tmp_path):
    """A BatchSpanProcessor passed in span_processors is flushed and shut down by the exit handler: its spans reach its exporter, with no internal error (Python 3.12+ starts no thread in exit handlers)."""
    out = tmp_path / "app-spans.txt"
    child, _ = run(
        f"""
        import asyncio
        import sdk
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

        class Lines(SpanExporter):
            def export(self, spans):
                with open({str(out)!r}, "a") as f:
                    f.writelines(span.name + "\\n" for span in spans)
                return SpanExportResult.SUCCESS

        sdk.init(exporter="none", span_processors=[BatchSpanProcessor(Lines(), schedule_delay_millis=60000)])

        async def main():
            with sdk.session("s"):
                pass

        asyncio.run(main())
        """,
        tmp_path,
    )
    assert child.returncode == 0, child.stderr
    assert "internal error" not in child.stderr
    assert out.read_text().split() == ["s"]
