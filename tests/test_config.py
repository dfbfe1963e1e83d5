"""Configuration loading (proxy/config.py): TOML file, environment overrides, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import (
    ByteSize,
    Config,
    ConfigError,
    GiB,
    LocalConfig,
    MiB,
    S3Config,
    ServerConfig,
    StorageConfig,
    load_config,
)
from proxy.config_tables import parse_size

REPO_CONFIG = Path(__file__).parents[1] / "config.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path | None, environ: dict[str, str] | None = None) -> str:
    """Load a config that must fail; returns the message after checking it is one line."""
    with pytest.raises(ConfigError) as info:
        load_config(path, {} if environ is None else environ)
    message = str(info.value)
    assert message
    assert "\n" not in message and "\r" not in message
    return message


# --- defaults and the repository's config.toml ---------------------------------------------------


def test_defaults_without_file_or_environment() -> None:
    config = load_config(None, {})
    assert config == Config()
    assert config.server == ServerConfig(
        host="127.0.0.1", port=8080, max_upload_bytes=ByteSize(0), shutdown_timeout=30.0
    )
    assert config.storage.backend == "local"
    assert config.storage.local.root == Path("data")
    s3 = config.storage.s3
    assert s3.bucket == ""
    assert s3.endpoint_url is None and s3.region is None
    assert s3.part_size == 6 * MiB
    assert s3.memory_budget == 256 * MiB
    assert s3.max_concurrency == 4


def test_repository_config_file() -> None:
    config = load_config(REPO_CONFIG, {})
    assert config.storage.backend == "local"
    assert config.storage.local.root == Path("./data")
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    # Empty strings in the file mean "not set" for optional settings.
    assert config.storage.s3.endpoint_url is None
    assert config.storage.s3.region is None
    assert config.storage.s3.part_size == 6 * MiB
    assert isinstance(config.storage.s3.part_size, ByteSize)


def test_repository_config_file_documents_the_defaults() -> None:
    assert load_config(REPO_CONFIG, {}) == Config()


def test_environ_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_PROXY_SERVER_PORT", "9123")
    assert load_config(None).server.port == 9123


# --- environment overrides -----------------------------------------------------------------------


def test_environment_overrides_nested_settings() -> None:
    config = load_config(
        REPO_CONFIG,
        {
            "STREAM_PROXY_SERVER_PORT": "9000",
            "STREAM_PROXY_SERVER_HOST": "0.0.0.0",
            "STREAM_PROXY_STORAGE_BACKEND": "s3",
            "STREAM_PROXY_STORAGE_S3_BUCKET": "videos",
            "STREAM_PROXY_STORAGE_S3_PART_SIZE": "8MiB",
            "STREAM_PROXY_STORAGE_S3_MAX_CONCURRENCY": "8",
            "STREAM_PROXY_STORAGE_S3_READ_TIMEOUT": "12.5",
            "STREAM_PROXY_STORAGE_LOCAL_ROOT": "/var/lib/proxy",
        },
    )
    assert config.server.port == 9000
    assert config.server.host == "0.0.0.0"
    assert config.storage.backend == "s3"
    assert config.storage.s3.bucket == "videos"
    assert config.storage.s3.part_size == 8 * MiB
    assert config.storage.s3.max_concurrency == 8
    assert config.storage.s3.read_timeout == 12.5
    assert config.storage.local.root == Path("/var/lib/proxy")
    # Settings not overridden keep the file's values.
    assert config.storage.s3.memory_budget == 256 * MiB
    assert config.server.shutdown_timeout == 30.0


def test_environment_overrides_win_over_file_and_keep_sibling_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [server]
        host = "10.0.0.1"
        port = 1234
        [storage.s3]
        bucket = "from-file"
        part_size = "10MiB"
        """,
    )
    config = load_config(path, {"STREAM_PROXY_SERVER_PORT": "4321", "STREAM_PROXY_STORAGE_S3_BUCKET": "env"})
    assert config.server.port == 4321
    assert config.server.host == "10.0.0.1"
    assert config.storage.s3.bucket == "env"
    assert config.storage.s3.part_size == 10 * MiB


def test_unrelated_environment_variables_are_ignored() -> None:
    config = load_config(None, {"PORT": "1", "SERVER_PORT": "2", "STREAM_PROXY_PORT": "3"})
    assert config.server.port == 8080


def test_empty_environment_value_clears_an_optional_setting(tmp_path: Path) -> None:
    path = write(tmp_path, '[storage.s3]\nendpoint_url = "http://127.0.0.1:9000"\n')
    assert load_config(path, {}).storage.s3.endpoint_url == "http://127.0.0.1:9000"
    assert load_config(path, {"STREAM_PROXY_STORAGE_S3_ENDPOINT_URL": ""}).storage.s3.endpoint_url is None


def test_bad_environment_value_names_the_setting() -> None:
    assert config_error(None, {"STREAM_PROXY_SERVER_PORT": "abc"}).startswith("server.port:")
    message = config_error(None, {"STREAM_PROXY_STORAGE_S3_PART_SIZE": "lots"})
    assert message.startswith("storage.s3.part_size:")
    assert "lots" in message


# --- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"6MiB"', 6 * MiB),
        ('"6 MiB"', 6 * MiB),
        ('"6mib"', 6 * MiB),
        ('"1.5GiB"', 3 * GiB // 2),
        ('"5242880"', 5 * MiB),
        ("5242880", 5 * MiB),
        ('"7MB"', 7_000_000),
        ('"5GiB"', 5 * GiB),
    ],
)
def test_part_size_accepts_sizes(tmp_path: Path, value: str, expected: int) -> None:
    path = write(tmp_path, f'[storage.s3]\npart_size = {value}\nmemory_budget = "8GiB"\n')
    config = load_config(path, {})
    assert config.storage.s3.part_size == expected
    assert isinstance(config.storage.s3.part_size, ByteSize)


def test_other_size_settings_accept_sizes(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nmax_upload_bytes = "1.5GiB"\n[storage.s3]\nmemory_budget = 16777216\n')
    config = load_config(path, {})
    assert config.server.max_upload_bytes == 1610612736
    assert config.storage.s3.memory_budget == 16 * MiB
    config = load_config(path, {"STREAM_PROXY_STORAGE_S3_MEMORY_BUDGET": "1GiB"})
    assert config.storage.s3.memory_budget == GiB


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1048576", 1048576),
        ("6MiB", 6 * MiB),
        ("  6 MiB  ", 6 * MiB),
        ("1.5GiB", 1610612736),
        ("512 KiB", 512 * 1024),
        ("1GB", 10**9),
        ("2kb", 2000),
        ("3TiB", 3 * 1024 * GiB),
        ("10b", 10),
        ("0.5KiB", 512),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "-1", "6 MiBs", "6XB", "1e6", "1,000", "six", "6 M iB", "1.MiB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@given(st.integers(min_value=0, max_value=2**53))
def test_parse_size_round_trips_integers(n: int) -> None:
    assert parse_size(str(n)) == n
    assert parse_size(f" {n} ") == n
    assert parse_size(f"{n}B") == n


@given(
    st.integers(min_value=0, max_value=2**20),
    st.sampled_from([("KiB", 1024), ("MiB", MiB), ("GiB", GiB), ("kB", 1000), ("MB", 10**6), ("GB", 10**9)]),
)
def test_parse_size_round_trips_integers_with_units(n: int, unit: tuple[str, int]) -> None:
    suffix, factor = unit
    assert parse_size(f"{n}{suffix}") == n * factor
    assert parse_size(f"{n} {suffix.upper()}") == n * factor


def test_parse_size_is_exact_for_huge_integers() -> None:
    assert parse_size(str(2**53 + 1)) == 2**53 + 1


def test_parse_size_is_exact_for_decimal_fractions() -> None:
    assert parse_size("2.01KB") == 2010


# --- errors --------------------------------------------------------------------------------------


def test_unknown_setting_is_named(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "[server]\nprot = 8080\n"))
    assert message == "server.prot: unknown setting"


def test_unknown_nested_setting_and_section_are_named(tmp_path: Path) -> None:
    assert config_error(write(tmp_path, '[storage.s3]\nbukcet = "x"\n')).startswith("storage.s3.bukcet:")
    assert config_error(write(tmp_path, "[sever]\nport = 1\n")).startswith("sever:")


@pytest.mark.parametrize(
    ("toml", "setting"),
    [
        ('[server]\nport = "abc"', "server.port"),
        ("[server]\nport = true", "server.port"),
        ("[server]\nport = [1]", "server.port"),
        ("[server]\nhost = 5", "server.host"),
        ("[server]\nshutdown_timeout = false", "server.shutdown_timeout"),
        ("[storage.s3]\npart_size = true", "storage.s3.part_size"),
        ('[storage.s3]\npart_size = "6 furlongs"', "storage.s3.part_size"),
        ("[storage.s3]\npart_size = [1]", "storage.s3.part_size"),
        ("[storage.s3]\nendpoint_url = 5", "storage.s3.endpoint_url"),
        ("[storage.s3]\nbucket = 1", "storage.s3.bucket"),
        ("server = 5", "server"),
        ("[storage]\ns3 = 1", "storage.s3"),
    ],
)
def test_wrong_types_name_the_setting(tmp_path: Path, toml: str, setting: str) -> None:
    assert config_error(write(tmp_path, toml + "\n")).startswith(f"{setting}:")


def test_float_for_an_int_setting_is_rejected(tmp_path: Path) -> None:
    assert config_error(write(tmp_path, "[server]\nport = 8080.7\n")).startswith("server.port:")


def test_non_string_for_a_path_setting_is_rejected(tmp_path: Path) -> None:
    assert config_error(write(tmp_path, "[storage.local]\nroot = true\n")).startswith("storage.local.root:")


@pytest.mark.parametrize(
    ("toml", "setting", "detail"),
    [
        ('[storage.s3]\npart_size = "4MiB"', "storage.s3.part_size", "5 MiB"),
        ("[storage.s3]\npart_size = 5242879", "storage.s3.part_size", "5242879"),
        ('[storage.s3]\npart_size = "6GiB"\nmemory_budget = "8GiB"', "storage.s3.part_size", "5 GiB"),
        ('[storage.s3]\npart_size = "8MiB"\nmemory_budget = "7MiB"', "storage.s3.memory_budget", "part_size"),
        ('[storage]\nbackend = "s3"', "storage.s3.bucket", "required"),
        ('[storage]\nbackend = "gcs"', "storage.backend", "'gcs'"),
        ("[server]\nport = 70000", "server.port", "70000"),
        ("[server]\nport = -1", "server.port", "-1"),
        ("[server]\nmax_upload_bytes = -1", "server.max_upload_bytes", "negative"),
        ("[storage.s3]\nmax_concurrency = 0", "storage.s3.max_concurrency", "at least 1"),
        ('[storage.s3]\nretry_mode = "sometimes"', "storage.s3.retry_mode", "'sometimes'"),
        ('[storage.s3]\naddressing_style = "dns"', "storage.s3.addressing_style", "'dns'"),
        ('[storage.s3]\nrequest_checksum_calculation = "never"', "storage.s3.request_checksum", "when"),
        ("[storage.s3]\nread_timeout = 0", "storage.s3.connect_timeout/read_timeout", "positive"),
    ],
)
def test_invalid_values_name_the_setting(tmp_path: Path, toml: str, setting: str, detail: str) -> None:
    message = config_error(write(tmp_path, toml + "\n"))
    assert message.startswith(f"{setting}")
    assert detail in message


def test_part_size_bounds_are_inclusive(tmp_path: Path) -> None:
    low = load_config(write(tmp_path, '[storage.s3]\npart_size = "5MiB"\n'), {})
    assert low.storage.s3.part_size == 5 * MiB
    high = load_config(write(tmp_path, '[storage.s3]\npart_size = "5GiB"\nmemory_budget = "5GiB"\n'), {})
    assert high.storage.s3.part_size == 5 * GiB


def test_s3_backend_with_bucket_is_valid(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[storage]\nbackend = "s3"\n[storage.s3]\nbucket = "b"\n'), {})
    assert config.storage == StorageConfig(backend="s3", local=LocalConfig(), s3=S3Config(bucket="b"))


def test_s3_backend_without_bucket_fails_even_from_environment() -> None:
    message = config_error(None, {"STREAM_PROXY_STORAGE_BACKEND": "s3"})
    assert message.startswith("storage.s3.bucket:")


def test_bad_toml_syntax(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\nport = 1\n")
    message = config_error(path)
    assert str(path) in message
    assert "not valid TOML" in message
    assert "line 1" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    message = config_error(path)
    assert str(path) in message
    assert "No such file" in message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    message = config_error(tmp_path)
    assert str(tmp_path) in message


def test_error_is_one_line_even_for_a_quoted_key_with_a_newline(tmp_path: Path) -> None:
    config_error(write(tmp_path, '[server]\n"po\\nrt" = 1\n'))


def test_value_with_a_newline_is_reported_on_one_line(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, '[storage]\nbackend = "s\\n3"\n'))
    assert message.startswith("storage.backend:")


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
@pytest.mark.parametrize(
    "setting", ["shutdown_timeout", "send_timeout", "body_timeout", "head_timeout", "keepalive_timeout"]
)
def test_server_timeouts_must_be_finite_non_negative_numbers(setting: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"server\.{setting}"):
        load_config(None, {f"STREAM_PROXY_SERVER_{setting.upper()}": value})


def test_send_timeout_defaults_to_a_minute_and_may_be_turned_off() -> None:
    assert load_config(None, {}).server.send_timeout == 60
    assert load_config(None, {"STREAM_PROXY_SERVER_SEND_TIMEOUT": "0"}).server.send_timeout == 0


def test_time_and_connection_limits_default_to_bounded_values_and_0_turns_them_off() -> None:
    server = load_config(None, {}).server
    assert (server.body_timeout, server.head_timeout, server.keepalive_timeout) == (60, 15, 15)
    assert server.max_connections == 1000
    names = ("BODY_TIMEOUT", "HEAD_TIMEOUT", "KEEPALIVE_TIMEOUT", "MAX_CONNECTIONS")
    off = load_config(None, {f"STREAM_PROXY_SERVER_{name}": "0" for name in names}).server
    assert (off.body_timeout, off.head_timeout, off.keepalive_timeout, off.max_connections) == (0, 0, 0, 0)


def test_body_min_rate_defaults_to_500_bytes_a_second_takes_sizes_and_0_turns_it_off(tmp_path: Path) -> None:
    assert load_config(None, {}).server.body_min_rate == 500
    assert load_config(None, {"STREAM_PROXY_SERVER_BODY_MIN_RATE": "1KiB"}).server.body_min_rate == 1024
    assert load_config(None, {"STREAM_PROXY_SERVER_BODY_MIN_RATE": "0"}).server.body_min_rate == 0
    with pytest.raises(ConfigError, match=r"server\.body_min_rate"):
        load_config(write(tmp_path, "[server]\nbody_min_rate = -1\n"), {})


@pytest.mark.parametrize("value", ["-1", "1.5", "many"])
def test_max_connections_must_be_a_whole_non_negative_number(value: str) -> None:
    with pytest.raises(ConfigError, match=r"server\.max_connections"):
        load_config(None, {"STREAM_PROXY_SERVER_MAX_CONNECTIONS": value})


def test_lists_come_from_toml_or_comma_separated_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\ninline_prefixes = ["site/", "docs/"]\nallowed_origins = []\n')
    config = load_config(path, {})
    assert config.server.inline_prefixes == ("site/", "docs/")
    assert config.server.allowed_origins == ()
    env = {"STREAM_PROXY_SERVER_ALLOWED_ORIGINS": "https://a.example, http://b.example:8080,"}
    assert load_config(path, env).server.allowed_origins == ("https://a.example", "http://b.example:8080")
    assert load_config(path, {"STREAM_PROXY_SERVER_INLINE_PREFIXES": ""}).server.inline_prefixes == ()


@pytest.mark.parametrize(
    ("text", "setting"),
    [
        ("[server]\ninline_prefixes = [1]\n", "server.inline_prefixes"),
        ('[server]\ninline_prefixes = ["../"]\n', "server.inline_prefixes"),
        ('[server]\nallowed_origins = ["https://a.example/path"]\n', "server.allowed_origins"),
        ('[server]\nallowed_origins = ["*"]\n', "server.allowed_origins"),
    ],
)
def test_bad_lists_name_the_setting(tmp_path: Path, text: str, setting: str) -> None:
    assert setting in config_error(write(tmp_path, text))
