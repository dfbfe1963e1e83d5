"""Access control: the one check every request passes before its handler runs, and
before its client is told to send a body (admission.py calls ``authorize``).

Who is asking: a signed URL (``/s/<token>/...`` or ``?sig=<token>``), else a bearer
token (``Authorization: Bearer <secret>``), else nobody (the anonymous grants). What
they ask for: each route declares its resource (``guard``, from routes.py), and the
method picks the action and the key or prefix it needs (proxy/rules/grants.py):

- an object: GET/HEAD ``read``, PUT ``write``, DELETE ``delete`` on its key;
- an object's video (/videos/): GET ``read``, POST ``read`` and ``write``, DELETE ``delete`` on its key;
- a folder: POST ``write`` on every key under its prefix, DELETE (or a POST with
  X-HTTP-Method-Override: DELETE) ``delete`` on every key under it; the listing: ``list``;
- tus: a creation needs ``write`` on the key the upload will have, fixed here from its
  metadata before any byte is stored; HEAD, PATCH and DELETE of an upload need
  ``write`` (``delete`` for DELETE) on the upload's key, and the caller must be the
  identity that created it (recorded as the upload's owner). A POST with
  X-HTTP-Method-Override is checked as the method it stands for. OPTIONS is free.

Refusals: no credentials that cover the request, 401 with ``WWW-Authenticate``;
credentials without the grant, 403 ``forbidden``; a signature that is forged, for
another key, or expired, 403 ``bad_signature`` / ``signature_expired``. The check runs
before anything is read from storage (but an upload's owner and key, by its
unguessable id, for a caller that may write somewhere; remembered, as they never
change), so a caller without ``read`` learns nothing of what exists; nor from a
DELETE, which tells a missing key (404) only to a caller who may read it
(``run_checked``). Without an ``[auth]`` section nothing is checked but signatures.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from uuid import uuid4

from aiohttp import web

from proxy.config import Config
from proxy.rules.content_types import content_type_for, essence
from proxy.rules.grants import Action, Grant, allows, allows_all_under, allows_any, visible_prefixes
from proxy.rules.keys import validate_key
from proxy.rules.signatures import QUERY_PARAMETER, SIGNED_PATH, SignedGrant, Verdict
from proxy.rules.tus import TUS_VERSION, metadata_text, object_key_for, parse_metadata, parse_uint
from proxy.storage.base import ObjectNotFound
from proxy.storage.resumable import UPLOAD_ID, UploadState
from proxy.web.errors import ApiError, Handler, to_api_error
from proxy.web.settings import AUTH, RESOURCES, TUS, UPLOAD_OWNERS, UPLOADS, AuthSettings, Resource

# Where a signature goes in the path: routes.py serves every route under it too.
SIGNED_BASE = SIGNED_PATH + "{signature}"
REALM = 'Bearer realm="stream-proxy"'
_KNOWN_UPLOADS = 4096  # uploads whose owner and key are remembered (a few hundred bytes each)


def guard(app: web.Application, resource: web.AbstractResource, kind: Resource) -> None:
    """Declare what ``resource`` is, so that its requests are checked as such. A
    route with no declaration is refused to everyone while access control is on."""
    app.setdefault(RESOURCES, {})[resource] = kind


def install(app: web.Application, config: Config) -> None:
    app[AUTH] = AuthSettings.of(config)
    app[UPLOAD_OWNERS] = OrderedDict()


@dataclass(frozen=True)
class Identity:
    name: str  # what the log says: never a secret
    owner: str | None  # what an upload it creates records as its owner
    grants: tuple[Grant, ...]
    signature: SignedGrant | None = None
    anonymous: bool = False

    def may(self, action: Action, key: str) -> bool:
        signed = self.signature
        if signed is not None and signed.action == action and signed.covers(key):
            return True
        return allows(self.grants, action, key)

    def may_all_under(self, action: Action, prefix: str) -> bool:
        signed = self.signature
        if signed is not None and signed.action == action and signed.covers_all_under(prefix):
            return True
        return allows_all_under(self.grants, action, prefix)

    def may_somewhere(self, action: Action) -> bool:
        return (self.signature is not None and self.signature.action == action) or allows_any(
            self.grants, action
        )


@dataclass(frozen=True)
class Creation:
    """A tus creation as checked: the id the upload gets, its key when the check
    fixes it (a signature for one key names the key), and its owner."""

    upload_id: str
    key: str | None
    owner: str | None


_WHO = web.RequestKey("caller", str)
_IDENTITY = web.RequestKey("identity", Identity)
_CREATION = web.RequestKey("creation", Creation)
_LISTABLE = web.RequestKey("listable", tuple)
_CHECKED = web.RequestKey("authorized", bool)
# A DELETE by a caller who may delete the key but not read it (see run_checked).
_HIDES_ABSENCE = web.RequestKey("hides_absence", bool)


def caller(request: web.BaseRequest) -> str:
    """Who made the request, for the log: a token's name, a signing key's id,
    ``anonymous``, or ``-`` before (or without) the check."""
    who: str = request.get(_WHO, "-")
    return who


def deletes_folder(request: web.Request) -> bool:
    """Whether a request to a folder is its DELETE: the method itself, or a POST with
    X-HTTP-Method-Override: DELETE (for clients that cannot send DELETE)."""
    if request.method == "POST":
        return request.headers.get("X-HTTP-Method-Override", "").upper() == "DELETE"
    return request.method == "DELETE"


def upload_creation(request: web.Request) -> Creation:
    return request.get(_CREATION) or Creation(uuid4().hex, None, None)


def listing_prefixes(request: web.Request) -> tuple[str, ...] | None:
    """The prefixes a listing may show keys under (in key order), or None for all."""
    return request.get(_LISTABLE)


def url_credential(request: web.Request) -> tuple[str, str]:
    """The signature of the request's URL as a path prefix or a query, for URLs the
    answer hands out (a tus upload's Location), so that they carry it too."""
    if "signature" in request.match_info:
        return SIGNED_PATH + request.match_info["signature"], ""
    if QUERY_PARAMETER in request.query:
        return "", f"?{QUERY_PARAMETER}={request.query[QUERY_PARAMETER]}"
    return "", ""


async def run_checked(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run ``handler`` if the caller may make ``request``. A DELETE of a missing key is
    answered 404 only to a caller who may read the key; to others 204, as S3 answers
    every DELETE, so that ``delete`` alone is no way to find out what is stored."""
    await authorize(request)
    if not request.get(_HIDES_ABSENCE):
        return await handler(request)
    try:
        return await handler(request)
    except ObjectNotFound:
        return web.Response(status=204)


async def authorize(request: web.Request) -> None:
    """Refuse ``request`` (an ApiError) unless its caller may make it. Runs once."""
    if request.get(_CHECKED):
        return
    settings = request.app[AUTH]
    route = request.match_info.route
    kind = request.app.get(RESOURCES, {}).get(route.resource) if route.resource is not None else None
    try:
        identity = _identify(request, settings)
        request[_WHO] = identity.name
        request[_IDENTITY] = identity
        if kind is None:
            if route.resource is not None and settings.configured:
                raise ApiError(403, "forbidden", "this route is open to no one")
        elif request.method == "OPTIONS" or kind in (Resource.HEALTH, Resource.PAGE):
            pass  # tus discovery, probes and the page's files, open to all; CORS preflights are cors.py's
        elif settings.open and identity.signature is None:
            # Anyone may do anything: nothing to look up, and no upload has an owner to check.
            if kind is Resource.UPLOADS:
                request[_CREATION] = Creation(uuid4().hex, None, identity.owner)
        else:
            await _check(request, kind, identity, open_=settings.open)
    except Exception as exc:
        api = to_api_error(exc)
        if api is None:
            raise
        if kind in (Resource.UPLOADS, Resource.UPLOAD):
            api.headers["Tus-Resumable"] = TUS_VERSION  # as the tus handler's own answers
        raise api from exc
    request[_CHECKED] = True


def _identify(request: web.Request, settings: AuthSettings) -> Identity:
    token = request.match_info.get("signature") or request.query.get(QUERY_PARAMETER)
    if token is not None:
        checked = settings.signatures.verify(token, now=time.time(), skew=settings.clock_skew)
        if checked.grant is None or checked.verdict is Verdict.BAD:
            request[_WHO] = "bad signature"
            raise ApiError(403, "bad_signature", "the URL's signature is not valid")
        name = f"key {checked.grant.key_id}"
        if checked.verdict is Verdict.EXPIRED:
            request[_WHO] = f"{name} (expired)"
            raise ApiError(403, "signature_expired", "the URL's signature has expired")
        # An upload made through a signed URL belongs to that URL alone.
        owner = "signature:" + hashlib.sha256(token.encode()).hexdigest()[:32]
        return Identity(name, owner, settings.anonymous, checked.grant)
    if not settings.configured:
        return Identity("-", None, settings.anonymous)
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.strip().partition(" ")
    if scheme.lower() == "bearer":
        token_of = settings.tokens.find(secret.strip())
        if token_of is None:
            request[_WHO] = "unknown token"
            raise ApiError(
                401,
                "invalid_token",
                "the bearer token is not valid",
                headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
            )
        return Identity(f"token {token_of.name}", f"token:{token_of.name}", token_of.grants)
    return Identity("anonymous", None if settings.open else "anonymous", settings.anonymous, anonymous=True)


async def _check(request: web.Request, kind: Resource, who: Identity, *, open_: bool) -> None:
    method = request.method
    if kind is Resource.OBJECT:
        key = request.match_info["key"]
        action = {"PUT": Action.WRITE, "DELETE": Action.DELETE}.get(method, Action.READ)
        _require(who.may(action, key), who, action, key)
        if action is Action.DELETE and not who.may(Action.READ, key):
            request[_HIDES_ABSENCE] = True
        if action is Action.WRITE:
            _within_limits(who.signature, request.content_length, request.headers.get("Content-Type"), key)
    elif kind is Resource.FILES and method in ("GET", "HEAD"):
        listable = visible_prefixes(who.grants, request.query.get("prefix", ""))
        _require(listable != (), who, Action.LIST, None)
        if listable is not None:
            request[_LISTABLE] = listable
    elif kind is Resource.FILES and deletes_folder(request):
        # All of it or nothing: a grant on part of the folder is refused the whole.
        prefix = request.match_info.get("prefix", "")
        _require(who.may_all_under(Action.DELETE, prefix), who, Action.DELETE, None)
    elif kind is Resource.FILES:
        prefix = request.match_info.get("prefix", "")
        _require(who.may_all_under(Action.WRITE, prefix), who, Action.WRITE, None)
        if who.signature is not None and who.signature.content_type is not None:
            # Each part's type is known only as the body is read: too late to refuse it.
            raise ApiError(403, "forbidden", "this URL allows one content type: upload with PUT or tus")
        _within_limits(who.signature, request.content_length, None, None)
    elif kind is Resource.VIDEO:
        key = request.match_info["key"]
        action = {"POST": Action.WRITE, "DELETE": Action.DELETE}.get(method, Action.READ)
        _require(who.may(action, key), who, action, key)
        if action is Action.WRITE:
            # A (re)made video is read from the object, and a missing object is told
            # (404): asking needs read as well, so write alone learns nothing.
            _require(who.may(Action.READ, key), who, Action.READ, key)
    elif kind is Resource.UPLOADS:
        request[_CREATION] = _creation(request, who)
    elif kind is Resource.METRICS:
        _require(who.may_all_under(Action.LIST, ""), who, Action.LIST, None)
    else:
        await _check_upload(request, who, open_=open_)


def _require(allowed: bool, who: Identity, action: Action, key: str | None) -> None:
    if allowed:
        return
    if who.anonymous:
        raise ApiError(
            401,
            "unauthorized",
            "this request needs credentials: a bearer token or a signed URL",
            headers={"WWW-Authenticate": REALM},
        )
    signed = who.signature
    if signed is not None and (key is None or not signed.covers(key)) and signed.action == action:
        raise ApiError(403, "bad_signature", "the URL's signature is not for this key")
    raise ApiError(403, "forbidden", f"these credentials do not allow {action.value} here")


def _within_limits(
    signed: SignedGrant | None, length: int | None, declared: str | None, key: str | None
) -> None:
    """The limits a signed upload URL sets: an announced size within ``max_size`` (the
    body cannot then go past it), and the content type the object will be stored with."""
    if signed is None or signed.action is not Action.WRITE:
        return
    if signed.max_size is not None:
        if length is None:
            raise ApiError(411, "length_required", "this URL needs the upload's size announced")
        if length > signed.max_size:
            raise ApiError(413, "too_large", f"this URL allows at most {signed.max_size} bytes")
    if signed.content_type is not None and key is not None:
        stored = essence(content_type_for(declared, key))
        if stored != essence(signed.content_type):
            raise ApiError(403, "forbidden", f"this URL allows only {signed.content_type} uploads")


def _creation(request: web.Request, who: Identity) -> Creation:
    """A tus creation: the upload's id and key chosen now, so that the key is checked
    before the upload exists."""
    upload_id = uuid4().hex
    signed = who.signature
    if signed is None and allows_all_under(who.grants, Action.WRITE, ""):
        return Creation(upload_id, None, who.owner)  # any key will do: the handler derives it
    _require(who.may_somewhere(Action.WRITE), who, Action.WRITE, None)
    raw_metadata = request.headers.get("Upload-Metadata", "")
    metadata = parse_metadata(raw_metadata)
    fixed: str | None = None
    if signed is not None and signed.action is Action.WRITE and not signed.prefix:
        # A URL signed for one key names the object: the template could not hit it.
        key = fixed = validate_key(signed.target)
    else:
        key = object_key_for(request.app[TUS].key_template, upload_id, metadata_text(metadata, "filename"))
    _require(who.may(Action.WRITE, key), who, Action.WRITE, key)
    length = parse_uint(request.headers.get("Upload-Length"), "Upload-Length")
    _within_limits(signed, length, metadata_text(metadata, "filetype"), key)
    return Creation(upload_id, fixed, who.owner)


async def _check_upload(request: web.Request, who: Identity, *, open_: bool) -> None:
    method = request.method
    if method == "POST":
        method = request.headers.get("X-HTTP-Method-Override", "").upper()
    # An override the handler does not know is refused there; it is checked as a write.
    action = Action.DELETE if method == "DELETE" else Action.WRITE
    _require(who.may_somewhere(action), who, action, None)
    upload_id = request.match_info["upload_id"]
    if not UPLOAD_ID.fullmatch(upload_id):
        return  # the handler answers 404 without looking
    owner, key = await _owner_and_key(request, upload_id)
    _may_go_on(who, action, key, owner, open_=open_)


def check_partial(request: web.Request, state: UploadState) -> None:
    """A tus final's creation names ``state`` as a partial: refuse it as a PATCH of
    that upload would be refused (``_check_upload``), as the caller could not go on
    with it."""
    who, settings = request.get(_IDENTITY), request.app[AUTH]
    if who is None or (settings.open and who.signature is None):
        return  # nothing was checked: anyone may do anything
    _may_go_on(who, Action.WRITE, state.key, state.owner, open_=settings.open)


def _may_go_on(who: Identity, action: Action, key: str, owner: str | None, *, open_: bool) -> None:
    """``who`` may do ``action`` to the upload of ``key`` created by ``owner``."""
    _require(who.may(action, key), who, action, key)
    if not open_ and owner is not None and owner != who.owner:
        raise ApiError(403, "forbidden", "this upload was created by someone else")


async def _owner_and_key(request: web.Request, upload_id: str) -> tuple[str | None, str]:
    """An upload's owner and key, which never change once it is created: read from its
    state the first time, then remembered (for the latest _KNOWN_UPLOADS uploads), so
    that a PATCH does not read the state twice, here and under the upload's lock in
    the handler (which still finds out if the upload has gone since)."""
    known = request.app[UPLOAD_OWNERS]
    facts = known.get(upload_id)
    if facts is not None:
        known.move_to_end(upload_id)
        return facts
    state = await request.app[UPLOADS].get(upload_id)  # none: 404, as the handler would say
    known[upload_id] = facts = (state.owner, state.key)
    if len(known) > _KNOWN_UPLOADS:
        known.popitem(last=False)
    return facts
