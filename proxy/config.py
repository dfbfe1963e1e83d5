"""Configuration: a TOML file, then environment overrides, into typed dataclasses.

Every setting ``section.sub.name`` can be overridden by the environment variable
``STREAM_PROXY_SECTION_SUB_NAME`` (upper case, dots become underscores), for example
``STREAM_PROXY_STORAGE_S3_BUCKET``. Sizes accept integers or strings such as
``"6MiB"``. S3 credentials are never read from here: botocore's standard chain
(environment, profile, instance role) supplies them.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.config_auth import check_auth, read_secrets
from proxy.config_tables import ByteSize as ByteSize
from proxy.config_tables import ConfigError as ConfigError
from proxy.config_tables import GiB as GiB
from proxy.config_tables import MiB as MiB
from proxy.config_tables import build_settings
from proxy.rules.forwarded import parse_networks
from proxy.rules.keys import validate_list_prefix
from proxy.rules.origins import is_origin
from proxy.rules.tus import validate_key_template

ENV_PREFIX = "STREAM_PROXY_"

S3_MIN_PART_SIZE = 5 * MiB
S3_MAX_PART_SIZE = 5 * GiB


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # 0 means no limit; S3's own limit of 5 TiB per object still applies.
    max_upload_bytes: ByteSize = ByteSize(0)
    # Seconds to let in-flight requests finish on shutdown.
    shutdown_timeout: float = 30.0
    # Sent with downloads; objects can be overwritten, so caches revalidate by default.
    cache_control: str = "no-cache"
    # A Range header with more ranges than this gets the whole object (200).
    max_ranges: int = 16
    # Seconds a download waits for its client to take more bytes before the
    # connection is closed (0: no limit): a paused player must not hold S3 or a file forever.
    send_timeout: float = 60.0
    # -- time and connection limits: no client may hold the server's resources for long.
    # Seconds a request body (PUT, POST, tus PATCH) may go without a byte while the
    # server waits for one before the upload is aborted with 408 (0: no limit); like
    # nginx's client_body_timeout.
    body_timeout: float = 60.0
    # Bytes per second a request body must average over each body_timeout seconds
    # spent waiting for it (0: no minimum), so that a client trickling a byte just
    # inside body_timeout cannot hold a connection and a temporary file for ever.
    # Time the server spends storing is not counted. 500 as Apache's mod_reqtimeout:
    # far below any real uplink, and it makes the cheap trickle cost real bandwidth.
    body_min_rate: ByteSize = ByteSize(500)
    # Seconds a request head (request line and headers) may take from its first byte
    # (0: no limit); a client trickling header lines is cut off after it.
    head_timeout: float = 15.0
    # Seconds a connection may wait without sending a byte, after it was accepted or
    # after its last answer, before it is closed (0: no limit). Keep-alive saves the
    # handshake between requests that follow each other within seconds (a player's
    # ranges, a tus client's chunks); longer idling only holds a descriptor.
    keepalive_timeout: float = 15.0
    # Connections one process serves at once; past it a new connection gets 503 at
    # once and is closed instead of waiting (0: no limit).
    max_connections: int = 1000
    # Key prefixes whose HTML, SVG, XML and JavaScript are served inline, as a web
    # site's would be; elsewhere such objects go out as sandboxed downloads, so that
    # an uploaded page cannot run its script on this server's origin.
    inline_prefixes: tuple[str, ...] = ()
    # Origins (scheme://host[:port]) of other sites whose pages may send PUT, POST,
    # PATCH and DELETE here; pages of the server's own origin always may.
    allowed_origins: tuple[str, ...] = ()
    # -- behind a reverse proxy (nginx): addresses or CIDR networks of the proxies whose
    # X-Forwarded-For/Proto/Host (and X-Request-ID) are believed, for the access log
    # and the same-origin check; from any other peer those headers are ignored.
    trusted_proxies: tuple[str, ...] = ()
    # -- processes and draining (proxy/serving/).
    # Processes serving the port, each with its own event loop and its own memory
    # budget; any may answer any request, since all state is in the backend.
    workers: int = 1
    # Seconds after SIGTERM during which new connections are still served while
    # /readyz says 503, so that load balancers stop sending before the port closes.
    drain_delay: float = 5.0
    # -- metrics: GET /metrics in Prometheus' text format (with [auth], for a token
    # that may list every key). Requests are counted either way; this only serves them.
    metrics: bool = True
    # -- the web page (proxy/page/): /, /watch and /static/ list, upload and play, so
    # that a browser is all a person needs; false serves none of them (an API-only server).
    web_ui: bool = True


@dataclass(frozen=True)
class LocalConfig:
    root: Path = Path("./data")


@dataclass(frozen=True)
class S3Config:
    bucket: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str = "auto"
    part_size: ByteSize = ByteSize(6 * MiB)
    max_concurrency: int = 4
    # Bytes of part buffers the whole process may hold; past it, uploads stop
    # reading from their clients until parts have been sent.
    memory_budget: ByteSize = ByteSize(256 * MiB)
    max_pool_connections: int = 500
    connect_timeout: float = 10.0
    # Seconds S3 may go without sending a byte of an answer. Long, as the original
    # system had it: a CompleteMultipartUpload or a copy of gigabytes is slow.
    read_timeout: float = 900.0
    # Seconds, retries included, that a call moving no object's bytes (HEAD, list,
    # delete, create or abort a multipart upload) may take in all: a stalled S3
    # must not hold a request for read_timeout, nor for its retries.
    call_timeout: float = 60.0
    retry_mode: str = "standard"
    max_attempts: int = 5
    request_checksum_calculation: str = "when_supported"
    response_checksum_validation: str = "when_supported"


@dataclass(frozen=True)
class StorageConfig:
    backend: str = "local"
    local: LocalConfig = field(default_factory=LocalConfig)
    s3: S3Config = field(default_factory=S3Config)


@dataclass(frozen=True)
class TusConfig:
    # Key of a finished upload: {id} is the upload's id, {filename} the filename from
    # its metadata reduced to one safe segment (the id again when there is none).
    key_template: str = "{id}/{filename}"
    # Seconds an upload may sit idle before it expires and is removed.
    expiration: float = 86400.0
    # Seconds between sweeps for expired uploads.
    sweep_interval: float = 600.0
    # S3: seconds a writer's lock on an upload lasts unless renewed. A process that
    # dies while writing blocks that upload for at most this long.
    lock_lease: float = 30.0


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "text", "json")


@dataclass(frozen=True)
class LogConfig:
    # The least severe messages written: debug, info, warning or error.
    level: str = "info"
    # "text": a line for a human; "json": one JSON object per line, for a log
    # collector; "auto": text when stderr is a terminal, json otherwise (a service).
    format: str = "auto"
    # One line per request (proxy/web/access_log.py); metrics count requests either way.
    access: bool = True


# -- video jobs ([video]): info, poster and HLS renditions of uploaded videos, made by
# ffmpeg in durable jobs kept in the backend (proxy/video/, proxy/jobs/).
@dataclass(frozen=True)
class VideoConfig:
    # false: no jobs are queued, /videos/ answers 404 and the page plays originals.
    # Also off (one warning at start) when ffmpeg or ffprobe cannot be found.
    enabled: bool = True
    # Whether `serve` runs the job loop too; false leaves jobs to `stream-proxy worker`
    # processes (other machines), while uploads still queue them.
    jobs: bool = True
    # Jobs one process runs at once (each is an ffmpeg using a core or more).
    max_jobs: int = 1
    # The programs, by name (looked up in PATH) or path.
    ffmpeg: str = "ffmpeg"
    ffprobe: str = "ffprobe"
    # Seconds of video per HLS segment (segments start at key frames: about this).
    segment_seconds: float = 4.0
    # Extra rendition heights (e.g. [360, 720]), never above the source's.
    ladder: tuple[int, ...] = ()
    # Seconds one job's ffmpeg work may take before it fails as timed out.
    time_limit: float = 3600.0
    # Where a job's temporary files go ("": the system's temporary directory).
    temp_dir: Path | None = None
    # Bytes of temporary files one job may hold; past it the job fails.
    max_temp: ByteSize = ByteSize(GiB)
    # Niceness of ffmpeg and ffprobe, so that serving stays responsive (0-19).
    nice: int = 10
    # Seconds a process's claim on a job lasts unless renewed: a job whose process
    # died is taken over by another after at most this long.
    lease: float = 30.0
    # Seconds between looks for queued jobs (a local upload wakes its process at once).
    poll_interval: float = 2.0


# -- access control ([auth]): with no such section the server is open, and serves only
# on a loopback address (proxy/cli.py); with one, every request is checked.
@dataclass(frozen=True)
class TokenConfig:
    # Named in the log of every request it makes; never the secret.
    name: str = ""
    # The secret's SHA-256 (hex), so that the file grants nothing if it leaks; or the
    # secret itself, read at start from an environment variable or a file.
    sha256: str = ""
    secret_env: str = ""
    secret_file: Path | None = None
    # "ACTIONS:PREFIX" each (proxy/rules/grants.py), e.g. "read,list:", "write:uploads/".
    grants: tuple[str, ...] = ()


@dataclass(frozen=True)
class SigningKeyConfig:
    # HMAC needs the secret itself (no hash will do): from an environment variable or
    # a file, or inline (tests, or a file only the server can read). At least 32 bytes.
    secret: str = field(default="", repr=False)
    secret_env: str = ""
    secret_file: Path | None = None


@dataclass(frozen=True)
class AuthConfig:
    # Everyone may do everything, on any address: set on purpose, never by default.
    open: bool = False
    # Grants of requests without credentials ("read:public/"); none by default.
    anonymous: tuple[str, ...] = ()
    tokens: tuple[TokenConfig, ...] = ()
    # Signed URLs' keys by id: several, so keys rotate without breaking issued URLs.
    signing_keys: dict[str, SigningKeyConfig] = field(default_factory=dict)
    # Seconds past its expiry a signature is still taken: the clocks of the machine
    # that signed and of this one may differ a little.
    clock_skew: float = 30.0
    # Origins whose pages' scripts may call this server and read its answers (CORS);
    # they may also write, as server.allowed_origins may.
    cors_origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tus: TusConfig = field(default_factory=TusConfig)
    log: LogConfig = field(default_factory=LogConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    auth: AuthConfig | None = None  # None: no [auth] section


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (if given), apply environment overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    env = os.environ if environ is None else environ
    config: Config = build_settings(Config, raw, env, ENV_PREFIX)
    _validate(config)
    if config.auth is not None:
        try:
            config = dataclasses.replace(config, auth=read_secrets(config.auth, env))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return config


_CHECKSUM_MODES = ("when_supported", "when_required")


def _validate(config: Config) -> None:
    server, storage, s3 = config.server, config.storage, config.storage.s3
    checks: list[tuple[bool, str]] = [
        (0 <= server.port <= 65535, f"server.port: must be 0-65535, got {server.port}"),
        (server.max_upload_bytes >= 0, "server.max_upload_bytes: must not be negative"),
        (server.shutdown_timeout >= 0, "server.shutdown_timeout: must not be negative"),
        (server.max_ranges >= 1, "server.max_ranges: must be at least 1"),
        (server.send_timeout >= 0, "server.send_timeout: must not be negative"),
        (server.body_timeout >= 0, "server.body_timeout: must not be negative"),
        (server.body_min_rate >= 0, "server.body_min_rate: must not be negative"),
        (server.head_timeout >= 0, "server.head_timeout: must not be negative"),
        (server.keepalive_timeout >= 0, "server.keepalive_timeout: must not be negative"),
        (server.max_connections >= 0, "server.max_connections: must not be negative"),
        (server.workers >= 1, "server.workers: must be at least 1"),
        (server.drain_delay >= 0, "server.drain_delay: must not be negative"),
        (
            config.log.level in LOG_LEVELS,
            f"log.level: must be one of {', '.join(LOG_LEVELS)}, got {config.log.level!r}",
        ),
        (
            config.log.format in LOG_FORMATS,
            f"log.format: must be one of {', '.join(LOG_FORMATS)}, got {config.log.format!r}",
        ),
        (
            storage.backend in ("local", "s3"),
            f"storage.backend: must be 'local' or 's3', got {storage.backend!r}",
        ),
        (
            storage.backend != "s3" or bool(s3.bucket),
            "storage.s3.bucket: required when storage.backend is 's3'",
        ),
        (
            S3_MIN_PART_SIZE <= s3.part_size <= S3_MAX_PART_SIZE,
            f"storage.s3.part_size: must be between 5 MiB and 5 GiB, got {s3.part_size}",
        ),
        (s3.max_concurrency >= 1, "storage.s3.max_concurrency: must be at least 1"),
        (s3.memory_budget >= s3.part_size, "storage.s3.memory_budget: must be at least storage.s3.part_size"),
        (s3.max_pool_connections >= 1, "storage.s3.max_pool_connections: must be at least 1"),
        (s3.max_attempts >= 1, "storage.s3.max_attempts: must be at least 1"),
        (
            s3.retry_mode in ("legacy", "standard", "adaptive"),
            f"storage.s3.retry_mode: must be legacy, standard or adaptive, got {s3.retry_mode!r}",
        ),
        (
            s3.addressing_style in ("auto", "path", "virtual"),
            f"storage.s3.addressing_style: must be auto, path or virtual, got {s3.addressing_style!r}",
        ),
        (
            s3.request_checksum_calculation in _CHECKSUM_MODES,
            "storage.s3.request_checksum_calculation: must be when_supported or when_required",
        ),
        (
            s3.response_checksum_validation in _CHECKSUM_MODES,
            "storage.s3.response_checksum_validation: must be when_supported or when_required",
        ),
        (
            s3.connect_timeout > 0 and s3.read_timeout > 0 and s3.call_timeout > 0,
            "storage.s3.connect_timeout/read_timeout/call_timeout: must be positive",
        ),
    ]
    tus = config.tus
    checks += [
        (tus.expiration > 0, "tus.expiration: must be positive"),
        (tus.sweep_interval > 0, "tus.sweep_interval: must be positive"),
        (tus.lock_lease >= 1, "tus.lock_lease: must be at least 1 second"),
    ]
    checks += _video_checks(config.video)
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    try:
        validate_key_template(tus.key_template)
    except ValueError as exc:
        raise ConfigError(f"tus.key_template: {exc}") from None
    for prefix in server.inline_prefixes:
        try:
            validate_list_prefix(prefix)
        except ValueError as exc:
            raise ConfigError(f"server.inline_prefixes: {prefix!r}: {exc}") from None
    try:
        parse_networks(server.trusted_proxies)
    except ValueError as exc:
        raise ConfigError(f"server.trusted_proxies: {exc}") from None
    for origin in server.allowed_origins:
        if not is_origin(origin):
            raise ConfigError(f"server.allowed_origins: {origin!r} is not scheme://host[:port]")
    if config.auth is not None:
        try:
            check_auth(config.auth)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


# Rendition heights: even (H.264 with 4:2:0 needs it), from 144p up to 8K.
MIN_HEIGHT, MAX_HEIGHT = 144, 4320


def _video_checks(video: VideoConfig) -> list[tuple[bool, str]]:
    bad_heights = [h for h in video.ladder if h % 2 or not MIN_HEIGHT <= h <= MAX_HEIGHT]
    return [
        (video.max_jobs >= 1, "video.max_jobs: must be at least 1"),
        (bool(video.ffmpeg.strip()), "video.ffmpeg: must name a program"),
        (bool(video.ffprobe.strip()), "video.ffprobe: must name a program"),
        (
            1 <= video.segment_seconds <= 60,
            f"video.segment_seconds: must be 1-60, got {video.segment_seconds:g}",
        ),
        (
            not bad_heights,
            f"video.ladder: heights must be even and {MIN_HEIGHT}-{MAX_HEIGHT}, got {bad_heights[:1]}",
        ),
        (len(set(video.ladder)) == len(video.ladder), "video.ladder: a height is listed twice"),
        (video.time_limit > 0, "video.time_limit: must be positive"),
        (video.max_temp >= 16 * MiB, "video.max_temp: must be at least 16 MiB"),
        (0 <= video.nice <= 19, f"video.nice: must be 0-19, got {video.nice}"),
        (video.lease >= 2, "video.lease: must be at least 2 seconds"),
        (video.poll_interval > 0, "video.poll_interval: must be positive"),
    ]
