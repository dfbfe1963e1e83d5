"""HTTP conditional requests (RFC 9110 §13): entity tags, HTTP-dates and preconditions.

Pure functions, no I/O. For a GET or HEAD of an existing object the handler calls
:func:`evaluate_preconditions` first (a 304 or 412 ends the request), then, when there
is a Range header, :func:`if_range_allows_partial` to know whether the range may be
honoured or the whole body must be sent (§13.2.2 steps 1 to 5).

Preconditions apply only when the request would otherwise succeed (§13.2.1): a missing
object is a 404 whatever its headers say, so call these only once the object is found.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

_OWS = " \t"
# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE, etagc = %x21 / %x23-7E / obs-text (§8.8.3).
# Non-ASCII characters stand for obs-text bytes however the field was decoded.
_ENTITY_TAG = re.compile(r'(?P<weak>W/)?"(?P<opaque>[^\x00-\x20"\x7f]*)"')

_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LONG_DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# The three HTTP-date forms of RFC 9110 §5.6.7. They are case-sensitive.
_DAY = "|".join(_DAY_NAMES)
_LONG_DAY = "|".join(_LONG_DAY_NAMES)
_MONTH = "|".join(_MONTHS)
_TIME = r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
_IMF_FIXDATE = re.compile(
    rf"(?:{_DAY}), (?P<day>[0-9]{{2}}) (?P<month>{_MONTH}) (?P<year>[0-9]{{4}}) {_TIME} GMT"
)
_RFC850_DATE = re.compile(
    rf"(?:{_LONG_DAY}), (?P<day>[0-9]{{2}})-(?P<month>{_MONTH})-(?P<year>[0-9]{{2}}) {_TIME} GMT"
)
_ASCTIME_DATE = re.compile(
    rf"(?:{_DAY}) (?P<month>{_MONTH}) (?P<day>[0-9]{{2}}| [0-9]) {_TIME} (?P<year>[0-9]{{4}})"
)

_SAFE_METHODS = ("GET", "HEAD")  # the methods a 304 can answer (§13.1.2, §13.1.3)


@dataclass(frozen=True)
class EntityTag:
    """An entity-tag (RFC 9110 §8.8.3): ``opaque`` is the text between the quotes."""

    opaque: str
    weak: bool = False

    def __str__(self) -> str:
        return f'{"W/" if self.weak else ""}"{self.opaque}"'

    def strong_match(self, other: EntityTag) -> bool:
        """Strong comparison (§8.8.3.2): neither is weak and the opaque tags are identical."""
        return not self.weak and not other.weak and self.opaque == other.opaque

    def weak_match(self, other: EntityTag) -> bool:
        """Weak comparison (§8.8.3.2): the opaque tags are identical, weak or not."""
        return self.opaque == other.opaque


def parse_entity_tag(value: str) -> EntityTag | None:
    """Parse one entity-tag such as ``"abc"`` or ``W/"abc"`` (§8.8.3); None if invalid.

    ``W/`` is case-sensitive; surrounding spaces and tabs are ignored.
    """
    match = _ENTITY_TAG.fullmatch(value.strip(_OWS))
    if match is None:
        return None
    return EntityTag(match["opaque"], weak=match["weak"] is not None)


def parse_entity_tag_list(value: str) -> tuple[EntityTag, ...] | Literal["*"] | None:
    """Parse an ``If-Match``/``If-None-Match`` value: ``"*"`` or ``1#entity-tag`` (§13.1.1).

    Elements are separated by commas with optional whitespace, and empty elements are
    skipped (§5.6.1). Commas may also occur inside an opaque tag, so this scans tags
    rather than splitting. Returns None when the value is invalid anywhere, or empty:
    a malformed list is not guessed at.
    """
    value = value.strip(_OWS)
    if value == "*":
        return "*"
    tags: list[EntityTag] = []
    pos = 0
    while True:
        pos = _skip_ows(value, pos)
        if pos == len(value):
            break
        if value[pos] == ",":
            pos += 1
            continue
        match = _ENTITY_TAG.match(value, pos)
        if match is None:
            return None
        tags.append(EntityTag(match["opaque"], weak=match["weak"] is not None))
        pos = _skip_ows(value, match.end())
        if pos < len(value) and value[pos] != ",":
            return None
    return tuple(tags) or None


def _skip_ows(value: str, pos: int) -> int:
    while pos < len(value) and value[pos] in _OWS:
        pos += 1
    return pos


def format_http_date(when: datetime) -> str:
    """Format ``when`` as an IMF-fixdate (§5.6.7), e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``.

    Sub-second precision is dropped (truncated, as :func:`evaluate_preconditions`
    compares). Names are spelled out here rather than with strftime, which follows the
    locale. ``when`` must be timezone-aware.
    """
    utc = _to_utc_second(when)
    return (
        f"{_DAY_NAMES[utc.weekday()]}, {utc.day:02d} {_MONTHS[utc.month - 1]} {utc.year:04d} "
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d} GMT"
    )


def parse_http_date(value: str, *, now: datetime | None = None) -> datetime | None:
    """Parse an HTTP-date (§5.6.7) into an aware UTC datetime; None if it is not one.

    All three forms are accepted, as recipients must: IMF-fixdate, and the obsolete
    RFC 850 and asctime forms. Parsing is strict (case, spacing, ``GMT``) because
    :func:`email.utils.parsedate_to_datetime` accepts much that is not an HTTP-date,
    numeric zones and missing day names among them, and the RFC says to ignore a field
    that is not a valid HTTP-date. The day name is not checked against the date, and a
    leap second (``:60``) is read as ``:59``.

    An RFC 850 two-digit year is taken in the century that does not put the date more
    than 50 years after ``now`` (default: the current time), as §5.6.7 requires.
    """
    value = value.strip(_OWS)
    match = _IMF_FIXDATE.fullmatch(value) or _ASCTIME_DATE.fullmatch(value)
    if match is not None:
        year = int(match["year"])
    else:
        match = _RFC850_DATE.fullmatch(value)
        if match is None:
            return None
        this_year = (now or datetime.now(UTC)).year
        year = this_year - this_year % 100 + int(match["year"])
        if year > this_year + 50:
            year -= 100
    hour, minute, second = int(match["hour"]), int(match["minute"]), int(match["second"])
    if hour > 23 or minute > 59 or second > 60:
        return None
    try:
        return datetime(
            year,
            _MONTHS.index(match["month"]) + 1,
            int(match["day"]),
            hour,
            minute,
            min(second, 59),
            tzinfo=UTC,
        )
    except ValueError:  # 31 Feb, year 0000, ...
        return None


def evaluate_preconditions(
    method: str, headers: Mapping[str, str], etag: str, last_modified: datetime
) -> int | None:
    """Evaluate the preconditions of a request on an existing representation (RFC 9110 §13.2.2).

    ``etag`` is the representation's ETag field value (``"..."`` or ``W/"..."``) and
    ``last_modified`` its aware modification time. Returns 412 or 304 to answer with
    that status, or None to go on with the request. In the RFC's order:

    1. If-Match, strong comparison, ``*`` matching any representation: false -> 412.
    2. Only without If-Match, If-Unmodified-Since: modified after the date -> 412.
    3. If-None-Match, weak comparison, ``*`` matching any representation: a match -> 304
       for GET and HEAD, 412 for other methods.
    4. Only without If-None-Match and for GET and HEAD, If-Modified-Since: not modified
       after the date -> 304.

    Dates are compared to the second, ``last_modified`` truncated, since that is all an
    HTTP-date carries. A date that is invalid (or a list of dates) is ignored, as §13.1.3
    and §13.1.4 require. An invalid entity-tag list matches nothing, which fails safe both
    ways: If-Match gives 412 rather than allowing a change, If-None-Match gives the full
    response rather than a wrong 304. Methods are case-sensitive (§9.1). Header names are
    looked up case-insensitively, and repeated fields are joined with commas (§5.3), so
    both a ``dict`` and aiohttp's ``CIMultiDictProxy`` work.
    """
    current = _parse_current_etag(etag)
    modified = _to_utc_second(last_modified)

    if_match = _field(headers, "if-match")
    if if_match is not None:
        if not _tag_list_matches(if_match, current, strong=True):
            return 412
    else:
        unmodified_since = _field_date(headers, "if-unmodified-since")
        if unmodified_since is not None and modified > unmodified_since:
            return 412

    if_none_match = _field(headers, "if-none-match")
    if if_none_match is not None:
        if _tag_list_matches(if_none_match, current, strong=False):
            return 304 if method in _SAFE_METHODS else 412
    elif method in _SAFE_METHODS:
        modified_since = _field_date(headers, "if-modified-since")
        if modified_since is not None and modified <= modified_since:
            return 304
    return None


def if_range_allows_partial(header: str | None, etag: str, last_modified: datetime) -> bool:
    """Whether a Range may be honoured given this ``If-Range`` value (RFC 9110 §13.1.5).

    Only call this for a request with a Range header: If-Range is ignored without one.
    True without If-Range. Otherwise the validator must match exactly: an entity-tag must
    be strong and strongly equal ``etag`` (a weak one never matches, clients must not
    send them), an HTTP-date must equal ``last_modified`` truncated to the second.
    Anything else, invalid values included, is False: send the whole body, which is
    always a correct answer, while a range of a changed object would corrupt the
    client's copy.

    The RFC also asks that a date only count when the server knows the object did not
    change twice within that second (§8.8.2.2); like nginx, this trusts it did not.
    """
    if header is None:
        return True
    value = header.strip(_OWS)
    # The forms are told apart by their first characters: a date starts with a day name.
    if value.startswith(('"', "W/")):
        tag = parse_entity_tag(value)
        return tag is not None and tag.strong_match(_parse_current_etag(etag))
    date = parse_http_date(value)
    return date is not None and date == _to_utc_second(last_modified)


def _parse_current_etag(etag: str) -> EntityTag:
    tag = parse_entity_tag(etag)
    if tag is None:
        raise ValueError(f"not a valid entity-tag: {etag!r}")
    return tag


def _tag_list_matches(value: str, current: EntityTag, *, strong: bool) -> bool:
    tags = parse_entity_tag_list(value)
    if tags is None:
        return False
    if tags == "*":
        return True  # the representation exists, see the module docstring
    if strong:
        return any(tag.strong_match(current) for tag in tags)
    return any(tag.weak_match(current) for tag in tags)


def _field(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name`` (lower case), repeated fields joined with ", "."""
    values = [value for key, value in headers.items() if key.lower() == name]
    return ", ".join(values) if values else None


def _field_date(headers: Mapping[str, str], name: str) -> datetime | None:
    value = _field(headers, name)
    return None if value is None else parse_http_date(value)


def _to_utc_second(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("a timezone-aware datetime is required")
    return when.astimezone(UTC).replace(microsecond=0)
