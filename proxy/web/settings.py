"""Everything the handlers read from the application: every AppKey, and the
settings each kind of request needs, taken from the config in one place."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

from aiohttp import web

from proxy.config import Config
from proxy.page.files import PageFiles
from proxy.rules.body_pace import Pace
from proxy.rules.forwarded import Network, parse_networks
from proxy.rules.grants import Action, Grant, parse_grant
from proxy.rules.signatures import Verifier
from proxy.rules.tokens import TokenTable
from proxy.storage.backend import Backend
from proxy.storage.base import Storage
from proxy.storage.readiness import Readiness
from proxy.storage.resumable import ResumableStore
from proxy.video.service import VideoService
from proxy.video.setup import video_service


@dataclass(frozen=True)
class DownloadSettings:
    cache_control: str
    max_ranges: int
    send_timeout: float | None = None
    inline_prefixes: tuple[str, ...] = ()  # keys whose active content is served inline


@dataclass(frozen=True)
class ConnectionSettings:
    """What the server (not a handler) bounds per connection; None or 0: no bound."""

    max_connections: int = 0
    head_timeout: float | None = None
    keepalive_timeout: float | None = None

    @classmethod
    def of(cls, config: Config) -> ConnectionSettings:
        server = config.server
        return cls(server.max_connections, server.head_timeout or None, server.keepalive_timeout or None)


@dataclass(frozen=True)
class TusSettings:
    key_template: str
    expiration: float
    max_size: int  # 0: no limit of our own


@dataclass
class Lifecycle:
    """What the process is going through: set by the server around the application
    (a SIGTERM starts draining), read by the readiness check."""

    draining: bool = False


class Resource(Enum):
    """What a route is to access control (auth.py), as routes.py declares it."""

    OBJECT = "object"  # /files/{key}
    FILES = "files"  # /files, /files/, /files/{prefix}/: GET lists, POST stores parts
    UPLOADS = "uploads"  # /uploads: tus creation
    UPLOAD = "upload"  # /uploads/{upload_id}
    HEALTH = "health"  # /livez, /readyz: open to all, as probes carry no credentials
    METRICS = "metrics"  # /metrics: list on every key (a grant "list:")
    PAGE = "page"  # /, /watch, /static/...: the web page's files, open to all (it asks for a token)
    VIDEO = "video"  # /videos/{key}: GET reads, POST writes, DELETE deletes the key's video


@dataclass(frozen=True)
class Token:
    name: str
    grants: tuple[Grant, ...]


# What anyone may do on an open server (no [auth] section, or auth.open).
_EVERYTHING = (Grant(frozenset(Action), ""),)


@dataclass(frozen=True)
class AuthSettings:
    configured: bool  # an [auth] section exists
    open: bool  # anyone may do anything
    anonymous: tuple[Grant, ...]
    tokens: TokenTable[Token]
    signatures: Verifier  # the signing keys, and the signatures verified lately
    clock_skew: float

    @classmethod
    def of(cls, config: Config) -> AuthSettings:
        auth = config.auth
        if auth is None:
            return cls(False, True, _EVERYTHING, TokenTable([]), Verifier({}), 0.0)
        # Open: anyone may do anything, and tokens (still told apart in the log) too.
        anonymous = _EVERYTHING if auth.open else tuple(parse_grant(g) for g in auth.anonymous)
        tokens = TokenTable(
            (t.sha256, Token(t.name, tuple(parse_grant(g) for g in t.grants) + anonymous))
            for t in auth.tokens
        )
        keys = {key_id: k.secret.encode("utf-8") for key_id, k in auth.signing_keys.items()}
        return cls(True, auth.open, anonymous, tokens, Verifier(keys), auth.clock_skew)


BACKEND: web.AppKey[Backend] = web.AppKey("backend", Backend)
STORAGE: web.AppKey[Storage] = web.AppKey("storage", Storage)
UPLOADS: web.AppKey[ResumableStore] = web.AppKey("uploads", ResumableStore)
MAX_UPLOAD: web.AppKey[int] = web.AppKey("max_upload_bytes", int)
BODY_TIMEOUT: web.AppKey[float | None] = web.AppKey("body_timeout")  # None: no limit
BODY_PACE: web.AppKey[Pace] = web.AppKey("body_pace", Pace)  # server.body_min_rate over body_timeout windows
DOWNLOADS: web.AppKey[DownloadSettings] = web.AppKey("downloads", DownloadSettings)
TUS: web.AppKey[TusSettings] = web.AppKey("tus", TusSettings)
SWEEP_INTERVAL: web.AppKey[float] = web.AppKey("sweep_interval", float)
ALLOWED_ORIGINS: web.AppKey[tuple[str, ...]] = web.AppKey("allowed_origins", tuple)
LIFECYCLE: web.AppKey[Lifecycle] = web.AppKey("lifecycle", Lifecycle)
READINESS: web.AppKey[Readiness] = web.AppKey("readiness", Readiness)
TRUSTED_PROXIES: web.AppKey[tuple[Network, ...]] = web.AppKey("trusted_proxies", tuple)
PAGE_FILES: web.AppKey[PageFiles] = web.AppKey("page_files", PageFiles)
# Access control (auth.py installs these): the [auth] settings, what each route is.
AUTH: web.AppKey[AuthSettings] = web.AppKey("auth", AuthSettings)
RESOURCES: web.AppKey[dict[web.AbstractResource, Resource]] = web.AppKey("resources", dict)
# The owner and key of the uploads auth.py checked lately, by upload id (never change).
UPLOAD_OWNERS: web.AppKey[OrderedDict[str, tuple[str | None, str]]] = web.AppKey("upload_owners", OrderedDict)
# Origins whose pages may call this server from script (auth.cors_origins; cors.py).
CORS_ORIGINS: web.AppKey[tuple[str, ...]] = web.AppKey("cors_origins", tuple)
# Video jobs (proxy/video/): None when video is off (no hooks run, /videos/ is 404).
VIDEOS: web.AppKey[VideoService | None] = web.AppKey("videos")


def install(app: web.Application, config: Config, backend: Backend) -> None:
    """Put the backend and every setting the handlers read on ``app``."""
    app[BACKEND] = backend
    app[LIFECYCLE] = Lifecycle()
    app[READINESS] = Readiness(backend.objects)
    # Checked when the config was loaded: parsing cannot fail here.
    app[TRUSTED_PROXIES] = parse_networks(config.server.trusted_proxies)
    app[PAGE_FILES] = PageFiles()  # read on first use
    app[STORAGE] = backend.objects
    app[UPLOADS] = backend.uploads
    app[MAX_UPLOAD] = config.server.max_upload_bytes
    app[BODY_TIMEOUT] = config.server.body_timeout or None
    app[BODY_PACE] = Pace(config.server.body_min_rate, config.server.body_timeout)
    app[DOWNLOADS] = DownloadSettings(
        cache_control=config.server.cache_control,
        max_ranges=config.server.max_ranges,
        send_timeout=config.server.send_timeout or None,
        inline_prefixes=config.server.inline_prefixes,
    )
    app[TUS] = TusSettings(
        key_template=config.tus.key_template,
        expiration=config.tus.expiration,
        max_size=config.server.max_upload_bytes,
    )
    app[SWEEP_INTERVAL] = config.tus.sweep_interval
    # Pages that may call this server from script (auth.cors_origins) may also write.
    cors_origins = config.auth.cors_origins if config.auth is not None else ()
    app[ALLOWED_ORIGINS] = config.server.allowed_origins + cors_origins
    app[VIDEOS] = video_service(config, backend.objects, run_jobs=config.video.jobs)
