"""Layered configuration: precedence, provenance, errors that name key/value/layer, masking, docs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import sdk
from sdk.settings import (
    DEFAULT_OTLP_GRPC_ENDPOINT,
    DEFAULT_OTLP_HTTP_ENDPOINT,
    SETTINGS,
    Config,
    ConfigError,
    Source,
    config_field_names,
    load_config,
)

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-t0ken-value"


def load(kwargs=None, env=None, cwd=None) -> Config:
    """load_config with an explicit environment; cwd defaults to the test's own tmp working dir."""
    return load_config(kwargs, environ=env or {}, cwd=cwd if cwd is not None else Path.cwd())


def write_toml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Each setting declared once


def test_every_setting_is_a_config_field_and_back():
    """The settings table and the Config dataclass name exactly the same settings."""
    assert config_field_names() == set(SETTINGS)


def test_every_setting_has_a_doc():
    """Every setting carries a non-empty description (it feeds the generated reference)."""
    assert [name for name, s in SETTINGS.items() if not s.doc.strip()] == []


def test_every_env_var_feeds_one_setting():
    """No environment variable is declared for two settings (which one would win would be unclear),
    except OpenTelemetry's generic OTLP variables, which feed one setting per signal (traces,
    metrics, logs: the signal-specific settings are named `metrics_*` / `logs_*`)."""
    fed: dict[str, list[str]] = {}
    for setting in SETTINGS.values():
        for var in setting.env:
            fed.setdefault(var.name, []).append(setting.name)
    for name, settings in fed.items():
        if len(settings) == 1:
            continue
        assert name.startswith("OTEL_EXPORTER_OTLP_"), (name, settings)
        signals = [s.split("_")[0] if s.startswith(("metrics_", "logs_")) else "traces" for s in settings]
        assert len(signals) == len(set(signals)), (name, settings)


def test_defaults_parse_as_their_own_values():
    """Every declared default passes its own parser unchanged, so the table cannot hold a bad default."""
    for name, setting in SETTINGS.items():
        assert setting.parse(setting.default) == setting.default, name


# ---------------------------------------------------------------------------------------------
# Layers and provenance


def test_defaults_have_default_source(tmp_path):
    """With no file, env or keywords every value is the declared default with source `default`."""
    config = load(cwd=tmp_path)
    for name, setting in SETTINGS.items():
        assert getattr(config, name) == setting.default, name
        assert config.sources[name] == Source("default"), name


def test_pyproject_tool_table_beats_default(tmp_path):
    """`[tool.sessiontrace]` in pyproject.toml sets values, with the file path as their source."""
    path = write_toml(
        tmp_path / "pyproject.toml",
        '[project]\nname = "x"\n\n[tool.sessiontrace]\nservice_name = "from-pyproject"\nmax_queue_size = 7\n',
    )
    config = load(cwd=tmp_path)
    assert config.service_name == "from-pyproject"
    assert config.max_queue_size == 7
    assert config.sources["service_name"] == Source("file", str(path))
    assert config.config_file == path
    assert config.sources["config_file"] == Source("file", str(path))


def test_sessiontrace_toml_beats_default(tmp_path):
    """A sessiontrace.toml with top-level keys sets values, with the file path as their source."""
    path = write_toml(tmp_path / "sessiontrace.toml", 'service_name = "from-file"\nenabled = false\n')
    config = load(cwd=tmp_path)
    assert (config.service_name, config.enabled) == ("from-file", False)
    assert config.sources["enabled"] == Source("file", str(path))


def test_sessiontrace_toml_accepts_a_sessiontrace_table(tmp_path):
    """A sessiontrace.toml may put its settings under a `[sessiontrace]` table instead."""
    write_toml(tmp_path / "sessiontrace.toml", '[sessiontrace]\nservice_name = "tabled"\n')
    assert load(cwd=tmp_path).service_name == "tabled"


def test_sessiontrace_toml_with_keys_outside_its_table_is_an_error(tmp_path):
    """Keys both at the top level and under [sessiontrace] raise instead of silently ignoring some."""
    path = write_toml(tmp_path / "sessiontrace.toml", 'enabled = false\n[sessiontrace]\nservice_name = "x"\n')
    with pytest.raises(ConfigError) as info:
        load(cwd=tmp_path)
    assert str(path) in str(info.value)
    assert "'enabled'" in str(info.value)


def test_config_file_is_found_by_searching_upward(tmp_path):
    """The search starts at cwd and walks up to the nearest folder with a config file."""
    path = write_toml(tmp_path / "sessiontrace.toml", 'service_name = "parent"\n')
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    config = load(cwd=deep)
    assert config.service_name == "parent"
    assert config.config_file == path


def test_nearest_config_file_wins(tmp_path):
    """A config file in a nearer folder wins over one further up."""
    write_toml(tmp_path / "sessiontrace.toml", 'service_name = "far"\n')
    write_toml(tmp_path / "sub" / "pyproject.toml", '[tool.sessiontrace]\nservice_name = "near"\n')
    assert load(cwd=tmp_path / "sub").service_name == "near"


def test_sessiontrace_toml_wins_over_pyproject_in_same_folder(tmp_path):
    """In one folder, sessiontrace.toml is read and pyproject.toml's table is not."""
    write_toml(tmp_path / "pyproject.toml", '[tool.sessiontrace]\nservice_name = "pyproject"\n')
    write_toml(tmp_path / "sessiontrace.toml", 'service_name = "dedicated"\n')
    assert load(cwd=tmp_path).service_name == "dedicated"


def test_pyproject_without_tool_table_does_not_stop_search(tmp_path):
    """A pyproject.toml without [tool.sessiontrace] is skipped and the search goes on upward."""
    write_toml(tmp_path / "sessiontrace.toml", 'service_name = "outer"\n')
    write_toml(tmp_path / "pkg" / "pyproject.toml", '[project]\nname = "pkg"\n')
    assert load(cwd=tmp_path / "pkg").service_name == "outer"


def test_search_starts_at_process_cwd_by_default(tmp_path):
    """Without cwd=, load_config searches from the process's working directory (the test's tmp dir)."""
    write_toml(tmp_path / "sessiontrace.toml", 'service_name = "cwd"\n')
    assert load_config(environ={}).service_name == "cwd"


def test_env_config_file_replaces_search(tmp_path):
    """SESSIONTRACE_CONFIG_FILE names the file to read; the searched-for one is ignored."""
    write_toml(tmp_path / "sessiontrace.toml", 'service_name = "searched"\n')
    chosen = write_toml(tmp_path / "conf" / "chosen.toml", 'service_name = "chosen"\n')
    config = load(env={"SESSIONTRACE_CONFIG_FILE": str(chosen)}, cwd=tmp_path)
    assert config.service_name == "chosen"
    assert config.sources["service_name"] == Source("file", str(chosen))
    assert config.config_file == chosen
    assert config.sources["config_file"] == Source("env", "SESSIONTRACE_CONFIG_FILE")


def test_init_config_file_beats_env_config_file(tmp_path):
    """init(config_file=...) wins over SESSIONTRACE_CONFIG_FILE and is recorded as the init layer."""
    from_env = write_toml(tmp_path / "env.toml", 'service_name = "env-file"\n')
    write_toml(tmp_path / "init.toml", 'service_name = "init-file"\n')
    config = load({"config_file": "init.toml"}, env={"SESSIONTRACE_CONFIG_FILE": str(from_env)}, cwd=tmp_path)
    assert config.service_name == "init-file"
    assert config.config_file == tmp_path / "init.toml"  # relative paths resolve against cwd
    assert config.sources["config_file"] == Source("init", "init(config_file=...)")


def test_explicit_pyproject_config_file_reads_tool_table(tmp_path):
    """A config_file named pyproject.toml is read through its [tool.sessiontrace] table."""
    path = write_toml(tmp_path / "x" / "pyproject.toml", '[tool.sessiontrace]\nservice_name = "tool"\n')
    assert load({"config_file": path}).service_name == "tool"


def test_env_beats_file(tmp_path):
    """An environment variable overrides the config file, and the source names the variable."""
    write_toml(tmp_path / "sessiontrace.toml", 'service_name = "file"\nmax_queue_size = 5\n')
    config = load(env={"SESSIONTRACE_SERVICE_NAME": "env"}, cwd=tmp_path)
    assert config.service_name == "env"
    assert config.sources["service_name"] == Source("env", "SESSIONTRACE_SERVICE_NAME")
    assert config.max_queue_size == 5  # untouched settings keep the file's value


def test_init_beats_env():
    """An init() keyword overrides the environment, and the source names the keyword."""
    config = load({"service_name": "init"}, env={"OTEL_SERVICE_NAME": "env"})
    assert config.service_name == "init"
    assert config.sources["service_name"] == Source("init", "init(service_name=...)")


def test_session_override_beats_init():
    """Config.with_overrides replaces an init() value for per-session settings, with source `session`."""
    base = load({"attribute_max_length": 100, "console_summary": True})
    config = base.with_overrides({"attribute_max_length": "12", "console_summary": False})
    assert (config.attribute_max_length, config.console_summary) == (12, False)
    assert config.sources["attribute_max_length"].layer == "session"
    assert "attribute_max_length" in config.sources["attribute_max_length"].detail
    assert base.attribute_max_length == 100  # the base config is not changed
    assert base.sources["attribute_max_length"].layer == "init"


def test_session_override_of_global_setting_is_refused():
    """Overriding a setting that is not per_session raises ConfigError listing the ones that are."""
    with pytest.raises(ConfigError) as info:
        load().with_overrides({"service_name": "x"})
    assert "service_name" in str(info.value)
    assert "attribute_max_length" in str(info.value)
    assert info.value.source.layer == "session"


def test_session_override_of_headers_does_not_leak_value():
    """A refused per-session override of a secret setting does not show the secret value."""
    with pytest.raises(ConfigError) as info:
        load().with_overrides({"headers": {"authorization": SECRET}})
    assert "headers" in str(info.value)
    assert SECRET not in str(info.value)


def test_session_override_unknown_key_suggests_name():
    """An unknown per-session override names the key and suggests the closest setting."""
    with pytest.raises(ConfigError, match=r"console_sumary.*did you mean 'console_summary'"):
        load().with_overrides({"console_sumary": True})


def test_sdk_session_overrides_apply_per_session(captured):
    """sdk.session(overrides=...) gives that session its own config; the global config is unchanged."""
    with sdk.session("s", overrides={"attribute_max_length": 9}) as s:
        assert s.config.attribute_max_length == 9
        assert s.config.sources["attribute_max_length"].layer == "session"
    assert sdk.config().attribute_max_length == 4096


def test_sdk_config_explain_reports_init_source():
    """sdk.config().explain() lists every setting with where its value came from after init()."""
    sdk.init(service_name="svc", exporter="none")
    rows = {name: (value, source) for name, value, source in sdk.config().explain()}
    assert list(rows) == list(SETTINGS)
    assert rows["service_name"] == ("svc", "init(service_name=...)")
    assert rows["flush_timeout"] == ("3.0", "default")


def test_source_str_names_layer_and_detail():
    """A Source reads as `env VAR`, `file PATH`, `init(key=...)` or `default` in messages."""
    assert str(Source("env", "OTEL_SERVICE_NAME")) == "env OTEL_SERVICE_NAME"
    assert str(Source("file", "/p/sessiontrace.toml")) == "file /p/sessiontrace.toml"
    assert str(Source("init", "init(endpoint=...)")) == "init(endpoint=...)"
    assert str(Source("default")) == "default"


# ---------------------------------------------------------------------------------------------
# Standard OTEL_* variables


def test_otel_service_name_is_read():
    """OTEL_SERVICE_NAME sets service_name."""
    config = load(env={"OTEL_SERVICE_NAME": "otel-svc"})
    assert config.service_name == "otel-svc"
    assert config.sources["service_name"] == Source("env", "OTEL_SERVICE_NAME")


def test_sessiontrace_env_beats_otel_env():
    """A SESSIONTRACE_* variable wins over the standard OTEL_* variable for the same setting."""
    config = load(env={"OTEL_SERVICE_NAME": "otel", "SESSIONTRACE_SERVICE_NAME": "st"})
    assert config.service_name == "st"


def test_otel_resource_attributes_are_parsed_and_percent_decoded():
    """OTEL_RESOURCE_ATTRIBUTES is `k=v,k2=v2` with percent-encoded values."""
    config = load(env={"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod, team=a%2Cb%20c"})
    assert config.resource_attributes == {"deployment.environment": "prod", "team": "a,b c"}
    assert config.sources["resource_attributes"] == Source("env", "OTEL_RESOURCE_ATTRIBUTES")


def test_service_name_from_otel_resource_attributes():
    """service.name in OTEL_RESOURCE_ATTRIBUTES becomes service_name when nothing else sets it."""
    config = load(env={"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-resource"})
    assert config.service_name == "from-resource"
    assert config.sources["service_name"] == Source("env", "OTEL_RESOURCE_ATTRIBUTES")


def test_otel_service_name_beats_resource_attribute_service_name():
    """OTEL_SERVICE_NAME wins over service.name inside OTEL_RESOURCE_ATTRIBUTES (OTel spec)."""
    env = {"OTEL_RESOURCE_ATTRIBUTES": "service.name=res", "OTEL_SERVICE_NAME": "named"}
    assert load(env=env).service_name == "named"


def test_otel_sdk_disabled_turns_sdk_off():
    """OTEL_SDK_DISABLED=true gives enabled=False; SESSIONTRACE_ENABLED wins over it."""
    assert load(env={"OTEL_SDK_DISABLED": "true"}).enabled is False
    assert load(env={"OTEL_SDK_DISABLED": "false"}).enabled is True
    assert load(env={"OTEL_SDK_DISABLED": "true", "SESSIONTRACE_ENABLED": "1"}).enabled is True


def test_generic_otlp_endpoint_gets_traces_path():
    """OTEL_EXPORTER_OTLP_ENDPOINT is a base URL: /v1/traces is appended to its path."""
    assert load(env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}).endpoint == (
        "http://collector:4318/v1/traces"
    )
    assert load(env={"OTEL_EXPORTER_OTLP_ENDPOINT": "https://gw.example/otlp/"}).endpoint == (
        "https://gw.example/otlp/v1/traces"
    )


def test_generic_otlp_endpoint_keeps_query_after_traces_path():
    """Appending /v1/traces goes into the URL's path, not after its query string."""
    config = load(env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/base?tenant=a"})
    assert config.endpoint == "http://collector:4318/base/v1/traces?tenant=a"


def test_traces_endpoint_used_as_is():
    """OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is the full URL and gets nothing appended."""
    config = load(env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/custom"})
    assert config.endpoint == "http://collector:4318/custom"


def test_traces_endpoint_beats_generic_endpoint():
    """The _TRACES_ endpoint variable wins over the generic one."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://specific:4318/v1/traces",
    }
    config = load(env=env)
    assert config.endpoint == "http://specific:4318/v1/traces"
    assert config.sources["endpoint"] == Source("env", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def test_traces_headers_beat_generic_headers():
    """OTEL_EXPORTER_OTLP_TRACES_HEADERS wins over OTEL_EXPORTER_OTLP_HEADERS (whole value, no merge)."""
    env = {"OTEL_EXPORTER_OTLP_HEADERS": "a=1,b=2", "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "c=3"}
    config = load(env=env)
    assert config.headers == {"c": "3"}
    assert config.sources["headers"] == Source("env", "OTEL_EXPORTER_OTLP_TRACES_HEADERS")


def test_generic_headers_are_read_and_lowercased():
    """OTEL_EXPORTER_OTLP_HEADERS is parsed; names are lower-cased, values percent-decoded."""
    config = load(env={"OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20abc,X-Tenant=t1"})
    assert config.headers == {"authorization": "Bearer abc", "x-tenant": "t1"}


def test_traces_protocol_beats_generic_protocol():
    """OTEL_EXPORTER_OTLP_TRACES_PROTOCOL wins over OTEL_EXPORTER_OTLP_PROTOCOL."""
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}
    config = load(env=env)
    assert config.protocol == "http/protobuf"
    assert config.sources["protocol"] == Source("env", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")


def test_generic_protocol_is_read():
    """OTEL_EXPORTER_OTLP_PROTOCOL sets the protocol when the _TRACES_ variant is unset."""
    config = load({"exporter": "none"}, env={"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert config.protocol == "grpc"
    assert config.sources["protocol"] == Source("env", "OTEL_EXPORTER_OTLP_PROTOCOL")


def test_traces_timeout_beats_generic_timeout():
    """OTEL_EXPORTER_OTLP_TRACES_TIMEOUT wins over OTEL_EXPORTER_OTLP_TIMEOUT (both in seconds)."""
    env = {"OTEL_EXPORTER_OTLP_TIMEOUT": "30", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2.5"}
    assert load(env=env).export_timeout == 2.5


def test_bsp_schedule_delay_is_milliseconds():
    """OTEL_BSP_SCHEDULE_DELAY is read in milliseconds; SESSIONTRACE_EXPORT_INTERVAL in seconds."""
    assert load(env={"OTEL_BSP_SCHEDULE_DELAY": "250"}).export_interval == 0.25
    assert load(env={"SESSIONTRACE_EXPORT_INTERVAL": "2"}).export_interval == 2.0


def test_empty_env_var_counts_as_unset():
    """An empty or blank variable is ignored, so the next variable or layer applies."""
    env = {"SESSIONTRACE_SERVICE_NAME": "  ", "OTEL_SERVICE_NAME": "fallback"}
    assert load(env=env).service_name == "fallback"


def test_init_endpoint_base_url_gets_traces_path():
    """init(endpoint=) with a bare base URL gets /v1/traces; one with a path is used as-is."""
    assert load({"endpoint": "http://localhost:4318"}).endpoint == "http://localhost:4318/v1/traces"
    assert load({"endpoint": "http://localhost:4318/"}).endpoint == "http://localhost:4318/v1/traces"
    assert load({"endpoint": "http://h:4318/x/traces"}).endpoint == "http://h:4318/x/traces"


def test_exporter_auto_resolves_by_endpoint():
    """exporter=auto means OTLP when an endpoint is set and the local file otherwise."""
    assert load().exporter_kind == "file"
    assert load({"endpoint": "http://h:4318"}).exporter_kind == "otlp"
    assert load({"exporter": InMemorySpanExporter()}).exporter_kind == "custom"


def test_default_traces_endpoint_follows_protocol():
    """Without an endpoint, OTLP goes to localhost:4318/v1/traces over HTTP and localhost:4317 over gRPC."""
    assert load().traces_endpoint == DEFAULT_OTLP_HTTP_ENDPOINT
    assert load({"protocol": "grpc", "exporter": "none"}).traces_endpoint == DEFAULT_OTLP_GRPC_ENDPOINT


def test_grpc_without_extra_is_a_config_error():
    """protocol=grpc with the OTLP exporter raises ConfigError pointing at the grpc extra when it is missing."""
    if importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is not None:
        pytest.skip("the grpc extra is installed")
    with pytest.raises(ConfigError, match=r"sessiontrace\[grpc\]") as info:
        load({"endpoint": "http://h:4317"}, env={"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert "env OTEL_EXPORTER_OTLP_PROTOCOL" in str(info.value)


def test_span_processors_keyword_accepts_one_or_many():
    """span_processors takes one SpanProcessor or a list of them and stores a tuple."""
    p1, p2 = SpanProcessor(), SpanProcessor()
    assert load({"span_processors": p1}).span_processors == (p1,)
    assert load({"span_processors": [p1, p2]}).span_processors == (p1, p2)


# ---------------------------------------------------------------------------------------------
# Errors: key, value (masked), layer


def error_of(kwargs=None, env=None, cwd=None) -> str:
    with pytest.raises(ConfigError) as info:
        load(kwargs, env, cwd)
    return str(info.value)


def test_unknown_init_keyword_suggests_close_name():
    """An unknown init() keyword raises ConfigError naming it, the init layer and the closest setting."""
    message = error_of({"servce_name": "x"})
    assert "servce_name" in message
    assert "init(servce_name=...)" in message
    assert "did you mean 'service_name'" in message


def test_unknown_init_keyword_without_close_match_lists_settings():
    """An unknown keyword with no close match lists the known settings."""
    message = error_of({"zzzz": 1})
    assert "known settings:" in message
    assert "service_name" in message


def test_unknown_key_reported_before_file_errors(tmp_path):
    """A mistyped init() keyword is reported even when the config file is broken too."""
    write_toml(tmp_path / "sessiontrace.toml", "not toml = = =")
    assert "did you mean 'enabled'" in error_of({"enabld": True}, cwd=tmp_path)


def test_malformed_env_endpoint_names_var_and_value():
    """A malformed OTEL_EXPORTER_OTLP_ENDPOINT names the setting, the value and the variable."""
    message = error_of(env={"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"})
    assert "endpoint" in message
    assert "'collector:4318'" in message
    assert "env OTEL_EXPORTER_OTLP_ENDPOINT" in message


@pytest.mark.parametrize(
    "url",
    ["ftp://h:21", "http://", "http://h:99999", "http://h:0", "http://[::1", "http://h /x", "not a url"],
)
def test_malformed_init_endpoint_is_rejected(url):
    """Non-http(s) schemes, missing hosts, bad ports and spaces in an endpoint raise ConfigError."""
    message = error_of({"endpoint": url})
    assert "endpoint" in message
    assert "init(endpoint=...)" in message


def test_endpoint_password_is_masked_in_errors_and_explain():
    """A password in an endpoint URL never appears in a ConfigError or in explain()."""
    message = error_of({"endpoint": f"ftp://user:{SECRET}@h"})
    assert SECRET not in message
    assert "user:***@h" in message
    rows = {n: v for n, v, _ in load({"endpoint": f"https://user:{SECRET}@h/v1/traces"}).explain()}
    assert rows["endpoint"] == "https://user:***@h/v1/traces"


def test_endpoint_password_masked_even_when_url_unparseable():
    """A password in a URL too malformed to parse is still masked in the error."""
    message = error_of({"endpoint": f"http://user:{SECRET}@[::1"})
    assert SECRET not in message


def test_malformed_headers_string_hides_secret():
    """Headers without `=` raise ConfigError naming headers and the variable, not the secret."""
    message = error_of(env={"OTEL_EXPORTER_OTLP_HEADERS": f"Authorization Bearer {SECRET}"})
    assert "headers" in message
    assert "env OTEL_EXPORTER_OTLP_HEADERS" in message
    assert SECRET not in message


def test_header_name_with_colon_hides_secret():
    """`Authorization: Bearer x=y` (a mistyped name that holds the credential) is refused without echoing it."""
    message = error_of(env={"OTEL_EXPORTER_OTLP_TRACES_HEADERS": f"ok=1,Authorization: {SECRET}=x"})
    assert "env OTEL_EXPORTER_OTLP_TRACES_HEADERS" in message
    assert "ok=***" in message
    assert SECRET not in message


def test_header_value_with_line_break_names_header_not_value():
    """A header value that HTTP cannot carry raises naming the header, not its value."""
    message = error_of({"headers": {"X-Api-Key": f"{SECRET}\r\nInjected: 1"}})
    assert "'x-api-key'" in message
    assert "init(headers=...)" in message
    assert SECRET not in message


def test_header_value_of_wrong_type_hides_other_values():
    """A non-string header value raises; the other header values stay masked in the message."""
    message = error_of({"headers": {"authorization": SECRET, "x-n": 5}})
    assert "'x-n'" in message
    assert "authorization=***" in message
    assert SECRET not in message


def test_headers_never_shown_in_explain_or_masked():
    """explain() and masked() show header names only; values are ***."""
    config = load(env={"OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer%20{SECRET}"})
    assert config.masked("headers") == "authorization=***"
    assert SECRET not in repr(config.explain())


def test_wrong_type_init_keyword_names_key_value_and_layer():
    """A value of the wrong type names the key, the value's repr and init(key=...)."""
    message = error_of({"service_name": 42})
    assert "service_name 42" in message
    assert "init(service_name=...)" in message
    assert "non-empty string" in message


@pytest.mark.parametrize(
    ("var", "value", "key"),
    [
        ("SESSIONTRACE_ENABLED", "maybe", "enabled"),
        ("OTEL_SDK_DISABLED", "yes please", "enabled"),
        ("SESSIONTRACE_MAX_QUEUE_SIZE", "12.5", "max_queue_size"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0", "max_export_batch_size"),
        ("SESSIONTRACE_FILE_MAX_BYTES", "100", "file_max_bytes"),
        ("SESSIONTRACE_FLUSH_TIMEOUT", "soon", "flush_timeout"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "-1", "export_timeout"),
        ("SESSIONTRACE_EXPORT_INTERVAL", "nan", "export_interval"),
        ("OTEL_BSP_SCHEDULE_DELAY", "inf", "export_interval"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "protocol"),
        ("OTEL_TRACES_EXPORTER", "zipkin", "exporter"),
        ("SESSIONTRACE_CONSOLE_SUMMARY", "sometimes", "console_summary"),
        ("OTEL_RESOURCE_ATTRIBUTES", "novalue", "resource_attributes"),
        ("SESSIONTRACE_SERVICE_NAME", "bad\x01name", "service_name"),
    ],
)
def test_bad_env_values_name_key_value_and_variable(var, value, key):
    """Bad bool/int/float/enum text in an env var raises ConfigError naming the key, value and variable."""
    message = error_of(env={var: value})
    assert message.startswith(f"sessiontrace config: {key} ")
    assert repr(value) in message
    assert f"(from env {var})" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("enabled", "maybe"),
        ("enabled", 1),
        ("max_queue_size", True),
        ("max_queue_size", 2.0),
        ("max_queue_size", 2**70),
        ("flush_timeout", "1e400"),
        ("flush_timeout", 1e30),
        ("export_timeout", 10**400),
        ("attribute_max_length", 0),
        ("data_dir", 3),
        ("data_dir", "bad\x00path"),
        ("exporter", "jaeger"),
        ("exporter", object()),
        ("span_processors", ["not a processor"]),
        ("resource_attributes", {"k": {"nested": 1}}),
        ("resource_attributes", 5),
        ("headers", ["a=b"]),
    ],
)
def test_bad_init_values_raise_config_error(key, value):
    """Wrong types and out-of-range values for init() keywords raise ConfigError naming key and layer."""
    message = error_of({key: value})
    assert message.startswith(f"sessiontrace config: {key} ")
    assert f"init({key}=...)" in message


def test_huge_values_are_shortened_in_messages():
    """A huge bad value is shown shortened, so the error stays readable."""
    message = error_of({"service_name": ["x" * 10_000]})
    assert "service_name" in message
    assert len(message) < 600


def test_value_with_broken_repr_still_gives_config_error():
    """A bad value whose __repr__ raises still produces a ConfigError (not the repr's exception)."""

    class Nasty:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    message = error_of({"service_name": Nasty()})
    assert "Nasty" in message


def test_mapping_that_raises_gives_config_error():
    """A mapping whose items() raises is reported as a ConfigError for that key."""
    from collections.abc import Mapping

    class Broken(Mapping):
        def __getitem__(self, key):
            raise KeyError(key)

        def __iter__(self):
            raise RuntimeError("cannot iterate")

        def __len__(self) -> int:
            return 1

    assert "headers" in error_of({"headers": Broken()})
    assert "resource_attributes" in error_of({"resource_attributes": Broken()})


def test_unknown_key_in_file_names_file_and_suggests(tmp_path):
    """An unknown key in a config file raises naming the key, the file and the closest setting."""
    path = write_toml(tmp_path / "sessiontrace.toml", 'servicename = "x"\n')
    message = error_of(cwd=tmp_path)
    assert "servicename" in message
    assert f"(from file {path})" in message
    assert "did you mean 'service_name'" in message


def test_bad_value_in_pyproject_names_file(tmp_path):
    """A bad value in [tool.sessiontrace] names the key, the value and the pyproject.toml path."""
    path = write_toml(tmp_path / "pyproject.toml", '[tool.sessiontrace]\nmax_queue_size = "lots"\n')
    message = error_of(cwd=tmp_path)
    assert "max_queue_size 'lots'" in message
    assert f"(from file {path})" in message


def test_code_only_setting_in_file_is_refused(tmp_path):
    """span_processors can only be an init() keyword; a config file setting it raises."""
    write_toml(tmp_path / "sessiontrace.toml", "span_processors = []\n")
    assert "init() keyword" in error_of(cwd=tmp_path)


def test_config_file_cannot_name_another(tmp_path):
    """A config file that sets config_file raises instead of chaining."""
    write_toml(tmp_path / "sessiontrace.toml", 'config_file = "other.toml"\n')
    assert "cannot name another" in error_of(cwd=tmp_path)


def test_invalid_toml_names_file(tmp_path):
    """Invalid TOML raises ConfigError naming the file and the parser's complaint."""
    path = write_toml(tmp_path / "sessiontrace.toml", "service_name = \n")
    message = error_of(cwd=tmp_path)
    assert str(path) in message
    assert "not valid TOML" in message


def test_non_utf8_config_file_is_invalid_toml(tmp_path):
    """A config file that is not UTF-8 raises ConfigError (TOML is UTF-8)."""
    (tmp_path / "sessiontrace.toml").write_bytes(b'service_name = "\xff\xfe"\n')
    assert "not valid TOML" in error_of(cwd=tmp_path)


def test_invalid_toml_in_pyproject_names_file(tmp_path):
    """A pyproject.toml met during the search that is not valid TOML raises naming it."""
    path = write_toml(tmp_path / "pyproject.toml", "[tool.sessiontrace\n")
    assert str(path) in error_of(cwd=tmp_path)


def test_tool_sessiontrace_not_a_table(tmp_path):
    """`tool.sessiontrace = 1` in pyproject.toml raises saying it must be a table."""
    write_toml(tmp_path / "pyproject.toml", "[tool]\nsessiontrace = 1\n")
    assert "must be a table" in error_of(cwd=tmp_path)


def test_missing_config_file_names_variable_that_named_it(tmp_path):
    """A SESSIONTRACE_CONFIG_FILE that does not exist raises naming the path and the variable."""
    missing = tmp_path / "nope.toml"
    message = error_of(env={"SESSIONTRACE_CONFIG_FILE": str(missing)}, cwd=tmp_path)
    assert str(missing) in message
    assert "env SESSIONTRACE_CONFIG_FILE" in message
    assert "cannot be read" in message


def test_config_file_that_is_a_folder_names_init_keyword(tmp_path):
    """init(config_file=<a folder>) raises a ConfigError naming init(config_file=...)."""
    message = error_of({"config_file": tmp_path})
    assert "init(config_file=...)" in message
    assert "cannot be read" in message


def test_config_error_is_a_value_error_with_fields():
    """ConfigError is a ValueError carrying key, (masked) value, source and problem."""
    with pytest.raises(ValueError, match="max_queue_size") as info:
        load(env={"SESSIONTRACE_MAX_QUEUE_SIZE": "-3"})
    err = info.value
    assert isinstance(err, sdk.ConfigError)
    assert (err.key, err.value, err.source) == (
        "max_queue_size",
        "-3",
        Source("env", "SESSIONTRACE_MAX_QUEUE_SIZE"),
    )
    assert "at least 1" in err.problem


def test_sdk_init_raises_config_error_for_bad_keyword():
    """sdk.init() surfaces a ConfigError for a bad keyword (it is not swallowed by the guard)."""
    with pytest.raises(sdk.ConfigError, match="did you mean 'exporter'"):
        sdk.init(exportr="none")


# ---------------------------------------------------------------------------------------------
# The generated reference


def _generator():
    spec = importlib.util.spec_from_file_location("gen_configuration", REPO / "docs" / "gen_configuration.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_doc_table_matches_generator():
    """docs/configuration.md holds exactly the table docs/gen_configuration.py prints (run it with --write)."""
    gen = _generator()
    doc = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert gen.table_in(doc) == gen.render_table()


def test_generated_table_has_a_row_per_setting():
    """The generated table has one row per setting, each naming its env vars and per-session flag."""
    gen = _generator()
    rows = gen.render_table().splitlines()[2:]
    assert len(rows) == len(SETTINGS)
    for row, setting in zip(rows, SETTINGS.values(), strict=True):
        assert row.startswith(f"| `{setting.name}` |")
        assert all(f"`{var.name}`" in row for var in setting.env)
        assert ("| yes |" in row) == setting.per_session


def test_config_repr_is_one_short_line_without_secrets():
    """repr(Config) — what a notebook cell shows for sdk.init(...) — is one short line that names where spans go and shows no header or URL credential."""
    config = load_config(
        {
            "service_name": "support-bot",
            "endpoint": "https://user:s3cret@collector.example/v1/traces",
            "headers": {"authorization": "Bearer abcdef123456"},
        }
    )
    text = repr(config)
    assert "\n" not in text
    assert len(text) < 200
    assert "support-bot" in text
    assert "otlp" in text
    assert "s3cret" not in text
    assert "abcdef123456" not in text
