"""No secret leaves by default: every byte the SDK writes or sends is searched for planted secrets.

Secrets are planted where programs really leak them — span attributes named like credentials,
secret-looking values, events, exception messages and stack traces, captured decorator
arguments, log records, session names, users, tags and end reasons — and the SDK runs with its
defaults (plus `export_logs`) against a loopback OTLP receiver that first answers 503 (so batches
go to the on-disk spool) and then accepts. Searched: every request body the receiver got (traces,
metrics, logs), every file under the data folder (local traces, spool, SQLite store), and what
the program printed.
"""

from __future__ import annotations

import logging
import string
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from otlp_receiver import OTLPReceiver

import sdk
from sdk.redaction import REDACTED, Redactor, Scrubber, key_names_secret

OPENAI = "sk-proj-Q3vTz8WmN1pL5kR7xY2aB4cD6eF8gH0j"
ANTHROPIC = "sk-ant-api03-Zq9Xw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe-abcDEF"
AWS_ID = "AKIAQ7ZLMNOPRSTU3XYZ"
AWS_SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYzEXAMPLEKEYq"
GITHUB = "ghp_R2d2C3poBb8Y0daLukeLeiaHanSolo123456"
SLACK = "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrSt"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1LTQyIiwicm9sZSI6ImFkbWluIn0.c2lnbmF0dXJlLXBsYW50ZWQ"
BEARER = "Zx8Vb7Nm6Lk5Jh4Gf3Ds2Aq1Wp0Oi9Uy"
DB_PASSWORD = "Db-pa55w0rd-planted"
UNDER_KEYS = ["PLANTED-api-key-value", "PLANTED-authz-value", "PLANTED-x-api-key", "PLANTED-password-arg"]
SECRETS = [OPENAI, ANTHROPIC, AWS_ID, AWS_SECRET, GITHUB, SLACK, JWT, BEARER, DB_PASSWORD, *UNDER_KEYS]


def _leaks(data: bytes) -> list[str]:
    """The planted secrets found in `data` (raw, and as a JSON or protobuf would carry them)."""
    return [secret for secret in SECRETS if secret.encode() in data]


def _plant(log: logging.Logger) -> None:
    tracer = trace.get_tracer("app")

    @sdk.tool(capture=True)
    def call_api(query: str, api_key: str, password: str) -> dict[str, str]:
        return {"status": "ok", "echo": f"searched {query}"}

    with sdk.session(
        f"chat {JWT}", user_id=f"user aws_secret_access_key={AWS_SECRET}", tags=[f"gh {GITHUB}"]
    ) as s:
        with tracer.start_as_current_span("outbound") as span:
            span.set_attribute("api_key", UNDER_KEYS[0])
            span.set_attribute("http.request.header.authorization", [UNDER_KEYS[1]])
            span.set_attribute("http.request.header.x-api-key", (UNDER_KEYS[2],))
            span.set_attribute("db.connection_string", f"postgres://admin:{DB_PASSWORD}@db:5432/app")
            span.set_attribute("note", f"the key is {OPENAI}")
            span.set_attribute("aws", f"id {AWS_ID}")
            sdk.event("login", detail=f"aws_secret_access_key={AWS_SECRET}", token=SLACK)
        call_api(f"issues by {GITHUB}", api_key=OPENAI, password=UNDER_KEYS[3])
        log.warning("calling upstream with Authorization: Bearer %s", BEARER)
        try:
            with tracer.start_as_current_span("upstream"):
                raise ConnectionError(f"upstream refused key {ANTHROPIC} (Authorization: Bearer {BEARER})")
        except ConnectionError:
            log.exception("upstream failed for %s", SLACK)
        s.set_attribute("credentials", {"user": "svc", "password": DB_PASSWORD})
    with pytest.raises(ValueError, match="hunter"):
        with sdk.session("second", user_id="u-2"):
            raise ValueError(f"hunter {OPENAI} {JWT}")
    ended = sdk.start_session("third")
    ended.end("fail", reason=f"token={SLACK} password={DB_PASSWORD}")


def test_no_planted_secret_in_anything_the_sdk_writes_or_sends(tmp_path, capfd):
    """With the defaults, no planted secret appears in any request the receiver got (traces, metrics, logs), any file under the data folder (traces, spool, store), or the program's output."""
    data_dir = tmp_path / "data"
    log = logging.getLogger("app")
    with OTLPReceiver() as receiver:
        receiver.fail(503)
        sdk.init(
            service_name="secrets",
            endpoint=receiver.url,
            exporter="otlp,file",
            data_dir=str(data_dir),
            export_logs=True,
            metrics=True,
            console_summary=True,
            export_interval=0.05,
            spool_retry_interval=0.1,
        )
        _plant(log)
        sdk.flush()
        deadline = time.monotonic() + 10
        while not list((data_dir / "spool").rglob("*.otlp")) and time.monotonic() < deadline:
            time.sleep(0.05)
        spooled = b"".join(p.read_bytes() for p in (data_dir / "spool").rglob("*.otlp"))
        assert spooled, "nothing was spooled while the receiver answered 503"
        on_disk_while_down = b"".join(p.read_bytes() for p in data_dir.rglob("*") if p.is_file())
        receiver.normal()
        deadline = time.monotonic() + 15
        while (list((data_dir / "spool").rglob("*.otlp")) or not receiver.accepted_spans) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.05)
        sdk.shutdown()
        sent = b"".join(r.body for r in receiver.requests)
        names = {s.name for s in receiver.accepted_spans}
        logs = receiver.logs
    on_disk = b"".join(p.read_bytes() for p in data_dir.rglob("*") if p.is_file())
    out, err = capfd.readouterr()
    assert {"outbound", "upstream", "execute_tool call_api"} <= names  # the content did arrive
    assert any("upstream failed" in str(record.body) for record in logs)
    assert (data_dir / "sessions.db").exists()
    assert REDACTED.encode() in sent
    assert _leaks(spooled) == []
    assert _leaks(on_disk_while_down) == []
    assert _leaks(sent) == []
    assert _leaks(on_disk) == []
    assert _leaks((out + err).encode()) == []


def test_scrubbing_can_be_turned_off_explicitly(tmp_path):
    """scrub=False (explicit) exports attribute values as they are; the default scrubs them."""
    for scrub, expect_secret in ((None, False), (False, True)):
        data_dir = tmp_path / f"data-{scrub}"
        settings = {"scrub": scrub} if scrub is not None else {}
        sdk.init(exporter="file", data_dir=str(data_dir), console_summary=False, **settings)
        with sdk.session("s"), trace.get_tracer("t").start_as_current_span("x") as span:
            span.set_attribute("api_key", UNDER_KEYS[0])
        sdk.shutdown()
        written = b"".join(p.read_bytes() for p in (data_dir / "traces").glob("*.jsonl"))
        assert (UNDER_KEYS[0].encode() in written) is expect_secret


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("api_key", True),
        ("apiKey", True),
        ("http.request.header.authorization", True),
        ("http.request.header.x-api-key", True),
        ("aws_secret_access_key", True),
        ("client_secret", True),
        ("set-cookie", True),
        ("oauth_token", True),
        ("session.id", False),
        ("session_id", False),
        ("user.id", False),
        ("gen_ai.usage.input_tokens", False),
        ("llm.token_count.prompt", False),
        ("gen_ai.request.max_tokens", False),
        ("author", False),
    ],
)
def test_secret_key_names(key, secret):
    """Keys naming secrets are recognised by their last part; token counts and session ids are not secrets."""
    from sdk.redaction import SECRET_KEYS

    assert key_names_secret(key, frozenset(SECRET_KEYS)) is secret


def test_scrub_keys_extend_or_replace_the_built_in_list():
    """scrub_keys=["builtin", "ssn"] adds a key; a list without "builtin" replaces the built-in one."""
    extended = Scrubber(keys=("builtin", "ssn"))
    assert extended.attribute("customer.ssn", "123-45-6789") == REDACTED
    assert extended.attribute("password", "hunter2hunter2") == REDACTED
    only = Scrubber(keys=("ssn",))
    assert only.attribute("password", "plain-text-value") == "plain-text-value"
    assert sdk.init(exporter="none", scrub_keys="builtin,ssn").scrub_keys == ("builtin", "ssn")


def test_value_patterns_catch_urls_with_passwords_and_key_value_pairs():
    """user:password@ in any URL scheme and key=value pairs for secret names are replaced, the rest kept."""
    scrubber = Scrubber()
    assert scrubber.text("postgres://admin:pw@db/app") == "postgres://admin:[REDACTED]@db/app"
    out = scrubber.text(f"export aws_secret_access_key={AWS_SECRET} region=eu-west-1")
    assert AWS_SECRET not in out
    assert "region=eu-west-1" in out
    assert scrubber.text("The token count was 42 for 3 tokens") == "The token count was 42 for 3 tokens"


_SEPARATORS = st.sampled_from([" ", "\n", "\t", '"', "'", ",", ";", "(", ")", "[", "]", "<", ">", "|", "/ "])
_PLANTED = st.sampled_from(
    [
        OPENAI,
        ANTHROPIC,
        AWS_ID,
        GITHUB,
        SLACK,
        JWT,
        f"Bearer {BEARER}",
        f"postgres://admin:{DB_PASSWORD}@db",
        f"aws_secret_access_key={AWS_SECRET}",
        f"password={UNDER_KEYS[3]}",
        f'"api_key": "{UNDER_KEYS[0]}"',
    ]
)


def _secret_part(planted: str) -> str:
    for secret in SECRETS:
        if secret in planted:
            return secret
    raise AssertionError(planted)


@settings(max_examples=300, deadline=None)
@given(
    before=st.text(max_size=60),
    after=st.text(max_size=60),
    planted=_PLANTED,
    left=_SEPARATORS,
    right=_SEPARATORS,
)
def test_scrubber_never_lets_a_planted_secret_through(before, after, planted, left, right):
    """Any text around a planted secret (set off by a separator) comes out as a string without the secret, and the scrubber never raises."""
    text = f"{before}{left}{planted}{right}{after}"
    out = Scrubber().text(text)
    assert isinstance(out, str)
    assert _secret_part(planted) not in out
    assert Redactor().text(text).find(_secret_part(planted)) == -1


@settings(max_examples=200, deadline=None)
@given(
    value=st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(string.printable, max_size=30),
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_scrubber_takes_any_value_without_raising(value):
    """Arbitrary nested values (what decorators capture) scrub to JSON-ready data without an exception."""
    import json

    json.dumps(Scrubber().value(value))
    json.dumps(Redactor().value(value))


def test_store_records_keep_names_users_and_tags_to_the_attribute_limit(tmp_path):
    """A 100,000-character name, user and tag are stored cut to attribute_max_length, as on the span."""
    from sdk.store.sqlite import SQLiteStore

    sdk.init(exporter="none", data_dir=str(tmp_path / "d"), attribute_max_length=256)
    with sdk.session("n" * 100_000, session_id="long", user_id="u" * 100_000, tags=["t" * 100_000]):
        pass
    sdk.shutdown()
    record = SQLiteStore(Path(tmp_path / "d" / "sessions.db")).get("long")
    assert record is not None
    assert len(record.name) == 256
    assert record.user_id is not None
    assert len(record.user_id) == 256
    assert [len(t) for t in record.tags] == [256]
