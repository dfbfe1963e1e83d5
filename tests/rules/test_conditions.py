"""Conditional requests (proxy/rules/conditions.py): entity tags, HTTP-dates and RFC 9110 §13.2.2."""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy.rules.conditions import (
    EntityTag,
    evaluate_preconditions,
    format_http_date,
    if_range_allows_partial,
    parse_entity_tag,
    parse_entity_tag_list,
    parse_http_date,
)

ETAG = '"v1"'
# Sub-second part on purpose: HTTP-dates cannot carry it, so comparisons must drop it.
LAST_MODIFIED = datetime(2024, 5, 6, 7, 8, 9, 500_000, tzinfo=UTC)
SAME = "Mon, 06 May 2024 07:08:09 GMT"
EARLIER = "Mon, 06 May 2024 07:08:08 GMT"
LATER = "Mon, 06 May 2024 07:08:10 GMT"
SAME_RFC850 = "Monday, 06-May-24 07:08:09 GMT"
SAME_ASCTIME = "Mon May  6 07:08:09 2024"
NOW = datetime(2025, 1, 1, tzinfo=UTC)
DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
LONG_DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# --- entity tags --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"abc"', EntityTag("abc")),
        ('W/"abc"', EntityTag("abc", weak=True)),
        ('""', EntityTag("")),
        ('W/""', EntityTag("", weak=True)),
        ('"a,b"', EntityTag("a,b")),  # commas are etagc
        ('"W/"', EntityTag("W/")),
        ('"!#~"', EntityTag("!#~")),
        ('"\u00e9t\u00e9"', EntityTag("\u00e9t\u00e9")),  # obs-text
        ('"d41d8cd98f00b204e9800998ecf8427e-2"', EntityTag("d41d8cd98f00b204e9800998ecf8427e-2")),
        (' "abc"\t', EntityTag("abc")),
        ("abc", None),
        ('w/"abc"', None),  # W/ is case-sensitive
        ('W/ "abc"', None),
        ("W/abc", None),
        ('"abc', None),
        ('abc"', None),
        ('"a"b"', None),
        ('"a b"', None),
        ('"a\x7f"', None),
        ('"a\x00"', None),
        ('"abc"x', None),
        ('"a", "b"', None),
        ("*", None),
        ("", None),
    ],
)
def test_parse_entity_tag(value: str, expected: EntityTag | None) -> None:
    assert parse_entity_tag(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("*", "*"),
        (" *\t", "*"),
        ('"a"', (EntityTag("a"),)),
        ('"a", "b"', (EntityTag("a"), EntityTag("b"))),
        ('"a","b"', (EntityTag("a"), EntityTag("b"))),
        ('"a" ,\t"b"', (EntityTag("a"), EntityTag("b"))),
        ('W/"a", "b"', (EntityTag("a", weak=True), EntityTag("b"))),
        ('"a",,"b"', (EntityTag("a"), EntityTag("b"))),
        (', "a" ,, ', (EntityTag("a"),)),
        ('"a,b", "c"', (EntityTag("a,b"), EntityTag("c"))),
        ('"a, b"', None),  # a space is not etagc
        ("", None),
        (" ", None),
        (",", None),
        (", ,", None),
        ('"a" "b"', None),
        ('"a";"b"', None),
        ('*, "a"', None),
        ('"a", *', None),
        ("**", None),
        ("a", None),
        ('"a", b', None),
        ('"a"x', None),
        ('"a", w/"b"', None),
    ],
)
def test_parse_entity_tag_list(value: str, expected: object) -> None:
    assert parse_entity_tag_list(value) == expected


@pytest.mark.parametrize(
    ("a", "b", "strong", "weak"),
    [
        # The table of RFC 9110 §8.8.3.2.
        ('W/"1"', 'W/"1"', False, True),
        ('W/"1"', 'W/"2"', False, False),
        ('W/"1"', '"1"', False, True),
        ('"1"', '"1"', True, True),
        ('"1"', '"2"', False, False),
    ],
)
def test_entity_tag_comparison(a: str, b: str, strong: bool, weak: bool) -> None:
    tag_a, tag_b = parse_entity_tag(a), parse_entity_tag(b)
    assert tag_a is not None and tag_b is not None
    assert tag_a.strong_match(tag_b) is strong is tag_b.strong_match(tag_a)
    assert tag_a.weak_match(tag_b) is weak is tag_b.weak_match(tag_a)


etagc = st.characters(min_codepoint=0x21, max_codepoint=0xFF).filter(lambda ch: ch not in '"\x7f')
entity_tags = st.builds(EntityTag, st.text(alphabet=etagc), st.booleans())


@given(entity_tags)
def test_entity_tag_round_trips(tag: EntityTag) -> None:
    assert parse_entity_tag(str(tag)) == tag


@given(st.lists(entity_tags, min_size=1), st.sampled_from([",", ", ", " ,", " , ", ",,", "\t,\t"]))
def test_entity_tag_list_round_trips(tags: list[EntityTag], separator: str) -> None:
    assert parse_entity_tag_list(separator.join(map(str, tags))) == tuple(tags)


@given(st.text())
def test_entity_tag_parsers_never_raise(value: str) -> None:
    parse_entity_tag(value)
    parse_entity_tag_list(value)


# --- HTTP-dates ---------------------------------------------------------------------------------

NOV_6_1994 = datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850 format
        "Sun Nov  6 08:49:37 1994",  # ANSI C's asctime() format
        " Sun, 06 Nov 1994 08:49:37 GMT\t",
        "Mon, 06 Nov 1994 08:49:37 GMT",  # a wrong day name is not checked
    ],
)
def test_parse_the_three_http_date_forms(value: str) -> None:
    assert parse_http_date(value, now=NOW) == NOV_6_1994


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Sun Nov 16 08:49:37 1994", datetime(1994, 11, 16, 8, 49, 37, tzinfo=UTC)),
        ("Thu, 01 Jan 1970 00:00:00 GMT", datetime(1970, 1, 1, tzinfo=UTC)),
        ("Fri, 31 Dec 9999 23:59:59 GMT", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("Thu, 29 Feb 2024 12:00:00 GMT", datetime(2024, 2, 29, 12, tzinfo=UTC)),
        ("Sat, 31 Dec 2016 23:59:60 GMT", datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC)),  # leap second
    ],
)
def test_parse_http_date_values(value: str, expected: datetime) -> None:
    assert parse_http_date(value) == expected


@pytest.mark.parametrize(
    ("two_digits", "now_year", "year"),
    [
        # §5.6.7: more than 50 years in the future means the most recent such year in the past.
        ("25", 2025, 2025),
        ("00", 2025, 2000),
        ("75", 2025, 2075),
        ("76", 2025, 1976),
        ("99", 2025, 1999),
        ("94", 2025, 1994),
        ("10", 2060, 2010),
        ("99", 2060, 2099),
        ("99", 2000, 1999),
        ("50", 2000, 2050),
        ("51", 2000, 1951),
    ],
)
def test_rfc850_two_digit_years(two_digits: str, now_year: int, year: int) -> None:
    now = datetime(now_year, 6, 1, tzinfo=UTC)
    parsed = parse_http_date(f"Sunday, 06-Nov-{two_digits} 08:49:37 GMT", now=now)
    assert parsed == datetime(year, 11, 6, 8, 49, 37, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "0",
        "784111777",  # seconds since the epoch
        "1994-11-06T08:49:37Z",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37 +0000",
        "Sun, 06 Nov 1994 08:49:37",
        "06 Nov 1994 08:49:37 GMT",  # email.utils accepts this one
        "sun, 06 Nov 1994 08:49:37 GMT",
        "SUN, 06 NOV 1994 08:49:37 GMT",
        "Sun, 06 nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 gmt",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun, 06 Nov 1994 8:49:37 GMT",
        "Sun, 06 Nov 1994 08:49 GMT",
        "Sun,  06 Nov 1994 08:49:37 GMT",
        "Sun 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06-Nov-94 08:49:37 GMT",
        "Sunday, 06-Nov-1994 08:49:37 GMT",
        "Sun Nov 6 08:49:37 1994",
        "Sun Nov  6 08:49:37 1994 GMT",
        "Sun, 31 Feb 1994 08:49:37 GMT",
        "Sun, 00 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 0000 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 08:49:61 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT",  # a list
        "Sun, 06 Nov 1994 08:49:37 GMT\n",
        "Sun, \u0660\u0666 Nov 1994 08:49:37 GMT",  # Arabic-Indic digits
    ],
)
def test_invalid_http_dates(value: str) -> None:
    assert parse_http_date(value) is None


def test_format_http_date() -> None:
    assert format_http_date(NOV_6_1994) == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert format_http_date(LAST_MODIFIED) == SAME  # microseconds dropped, not rounded
    paris = timezone(timedelta(hours=2))
    assert format_http_date(datetime(2024, 5, 6, 9, 8, 9, tzinfo=paris)) == SAME
    assert format_http_date(datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC)) == "Wed, 02 Jan 0999 03:04:05 GMT"


def test_format_http_date_needs_an_aware_datetime() -> None:
    with pytest.raises(ValueError):
        format_http_date(datetime(2024, 5, 6, 7, 8, 9))


offsets = st.builds(timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)))
aware_datetimes = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(9000, 1, 1), timezones=offsets | st.just(UTC)
)


@given(aware_datetimes)
def test_format_then_parse_round_trips_to_the_second(when: datetime) -> None:
    expected = when.astimezone(UTC).replace(microsecond=0)
    formatted = format_http_date(when)
    assert parse_http_date(formatted) == expected
    # The standard library agrees on what the IMF-fixdate means.
    assert email.utils.parsedate_to_datetime(formatted) == expected


@given(st.datetimes(min_value=datetime(1976, 1, 1), max_value=datetime(2074, 12, 31)))
def test_obsolete_forms_parse_to_the_same_instant(when: datetime) -> None:
    when = when.replace(microsecond=0, tzinfo=UTC)
    # Names spelled out: strftime's %a and %b follow the locale.
    day, long_day = DAY_NAMES[when.weekday()], LONG_DAY_NAMES[when.weekday()]
    month = MONTHS[when.month - 1]
    rfc850 = f"{long_day}, {when.day:02d}-{month}-{when.year % 100:02d} {when:%H:%M:%S} GMT"
    asctime = f"{day} {month} {when.day:2d} {when:%H:%M:%S} {when.year}"
    assert parse_http_date(rfc850, now=NOW) == when
    assert parse_http_date(asctime) == when


@given(st.text())
def test_parse_http_date_never_raises(value: str) -> None:
    parse_http_date(value)


# --- evaluate_preconditions ---------------------------------------------------------------------


def evaluate(headers: Mapping[str, str], method: str = "GET", etag: str = ETAG) -> int | None:
    return evaluate_preconditions(method, headers, etag, LAST_MODIFIED)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Range": "bytes=0-1", "If-Range": '"other"'}, None),  # not preconditions here
        # If-Match: strong comparison (§13.1.1).
        ({"If-Match": ETAG}, None),
        ({"If-Match": '"v2"'}, 412),
        ({"If-Match": '"v2", "v1"'}, None),
        ({"If-Match": "*"}, None),
        ({"If-Match": 'W/"v1"'}, 412),
        ({"If-Match": "v1"}, 412),  # invalid: matches nothing
        ({"If-Match": ""}, 412),
        # If-Unmodified-Since, to the second (§13.1.4).
        ({"If-Unmodified-Since": SAME}, None),
        ({"If-Unmodified-Since": SAME_RFC850}, None),
        ({"If-Unmodified-Since": SAME_ASCTIME}, None),
        ({"If-Unmodified-Since": LATER}, None),
        ({"If-Unmodified-Since": EARLIER}, 412),
        ({"If-Unmodified-Since": "yesterday"}, None),  # invalid: ignored
        ({"If-Unmodified-Since": f"{EARLIER}, {EARLIER}"}, None),  # a list: ignored
        # If-Match beats If-Unmodified-Since: the date is not even looked at.
        ({"If-Match": ETAG, "If-Unmodified-Since": EARLIER}, None),
        ({"If-Match": '"v2"', "If-Unmodified-Since": LATER}, 412),
        # If-None-Match: weak comparison (§13.1.2).
        ({"If-None-Match": ETAG}, 304),
        ({"If-None-Match": 'W/"v1"'}, 304),
        ({"If-None-Match": '"v2"'}, None),
        ({"If-None-Match": '"v2", W/"v1"'}, 304),
        ({"If-None-Match": "*"}, 304),
        ({"If-None-Match": "v1"}, None),  # invalid: matches nothing
        # If-Modified-Since, to the second (§13.1.3).
        ({"If-Modified-Since": SAME}, 304),
        ({"If-Modified-Since": SAME_RFC850}, 304),
        ({"If-Modified-Since": SAME_ASCTIME}, 304),
        ({"If-Modified-Since": LATER}, 304),
        ({"If-Modified-Since": EARLIER}, None),
        ({"If-Modified-Since": "yesterday"}, None),
        ({"If-Modified-Since": f"{LATER}, {LATER}"}, None),
        # If-None-Match beats If-Modified-Since.
        ({"If-None-Match": '"v2"', "If-Modified-Since": LATER}, None),
        ({"If-None-Match": ETAG, "If-Modified-Since": EARLIER}, 304),
        # The 412 of steps 1 and 2 comes before the 304 of steps 3 and 4.
        ({"If-Match": '"v2"', "If-None-Match": ETAG}, 412),
        ({"If-Unmodified-Since": EARLIER, "If-None-Match": ETAG}, 412),
        ({"If-Unmodified-Since": EARLIER, "If-Modified-Since": LATER}, 412),
        ({"If-Match": ETAG, "If-None-Match": ETAG}, 304),
        ({"If-Match": "*", "If-Modified-Since": SAME}, 304),
        ({"If-Unmodified-Since": SAME, "If-Modified-Since": SAME}, 304),
        (
            {
                "If-Match": ETAG,
                "If-Unmodified-Since": EARLIER,
                "If-None-Match": '"v2"',
                "If-Modified-Since": LATER,
            },
            None,
        ),
        # Field names are case-insensitive.
        ({"if-none-match": ETAG}, 304),
        ({"IF-MATCH": '"v2"'}, 412),
        ({"if-modified-since": SAME}, 304),
    ],
)
def test_preconditions_for_get(headers: dict[str, str], expected: int | None) -> None:
    assert evaluate(headers) == expected
    assert evaluate(headers, method="HEAD") == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"If-Match": ETAG}, None),
        ({"If-Match": '"v2"'}, 412),
        ({"If-Unmodified-Since": EARLIER}, 412),
        ({"If-None-Match": ETAG}, 412),  # not 304: nothing cached to reuse
        ({"If-None-Match": "*"}, 412),
        ({"If-None-Match": '"v2"'}, None),
        ({"If-Modified-Since": LATER}, None),  # only for GET and HEAD
        ({"If-Modified-Since": SAME}, None),
    ],
)
@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "get"])
def test_preconditions_for_other_methods(headers: dict[str, str], method: str, expected: int | None) -> None:
    assert evaluate(headers, method=method) == expected


def test_preconditions_with_a_weak_current_etag() -> None:
    assert evaluate({"If-Match": 'W/"v1"'}, etag='W/"v1"') == 412
    assert evaluate({"If-Match": '"v1"'}, etag='W/"v1"') == 412
    assert evaluate({"If-Match": "*"}, etag='W/"v1"') is None
    assert evaluate({"If-None-Match": '"v1"'}, etag='W/"v1"') == 304
    assert evaluate({"If-None-Match": 'W/"v1"'}, etag='W/"v1"') == 304


def test_repeated_fields_are_combined() -> None:
    # Two field lines are one comma-separated list (RFC 9110 §5.3), as aiohttp keeps them.
    assert evaluate(CIMultiDict([("If-None-Match", '"a"'), ("if-none-match", ETAG)])) == 304
    assert evaluate(CIMultiDict([("If-Match", '"a"'), ("If-Match", ETAG)])) is None
    # ... which makes a repeated date a list, and so invalid and ignored (§13.1.3).
    assert evaluate(CIMultiDict([("If-Modified-Since", SAME), ("If-Modified-Since", SAME)])) is None


def test_last_modified_in_another_timezone_is_the_same_instant() -> None:
    paris = LAST_MODIFIED.astimezone(timezone(timedelta(hours=2)))
    assert evaluate_preconditions("GET", {"If-Modified-Since": SAME}, ETAG, paris) == 304
    assert evaluate_preconditions("GET", {"If-Unmodified-Since": EARLIER}, ETAG, paris) == 412


def test_preconditions_refuse_caller_bugs() -> None:
    with pytest.raises(ValueError):
        evaluate_preconditions("GET", {}, "v1", LAST_MODIFIED)  # an ETag is quoted
    with pytest.raises(ValueError):
        evaluate_preconditions("GET", {}, ETAG, LAST_MODIFIED.replace(tzinfo=None))


# Each header absent, or one of a few values: matching, not matching, invalid.
header_choices = st.fixed_dictionaries(
    {},
    optional={
        "If-Match": st.sampled_from([ETAG, '"v2"', "*", 'W/"v1"', "junk"]),
        "If-Unmodified-Since": st.sampled_from([SAME, EARLIER, LATER, "junk"]),
        "If-None-Match": st.sampled_from([ETAG, '"v2"', "*", 'W/"v1"', "junk"]),
        "If-Modified-Since": st.sampled_from([SAME, EARLIER, LATER, "junk"]),
    },
)
methods = st.sampled_from(["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH"])


@given(header_choices, methods)
def test_precondition_order_properties(headers: dict[str, str], method: str) -> None:
    result = evaluate(headers, method=method)
    assert result in (None, 304, 412)
    if result == 304:
        assert method in ("GET", "HEAD")
    without = dict(headers)
    # If-Match, when present, decides step 1 alone and makes If-Unmodified-Since irrelevant.
    if "If-Match" in headers:
        if headers["If-Match"] in ('"v2"', 'W/"v1"', "junk"):
            assert result == 412
        without.pop("If-Unmodified-Since", None)
    # Likewise If-None-Match for If-Modified-Since; and If-Modified-Since is for GET/HEAD only.
    if "If-None-Match" in headers or method not in ("GET", "HEAD"):
        without.pop("If-Modified-Since", None)
    assert evaluate(without, method=method) == result


@given(st.dictionaries(st.sampled_from(["If-Match", "If-None-Match", "If-Modified-Since"]), st.text()))
def test_preconditions_never_raise_on_arbitrary_values(headers: dict[str, str]) -> None:
    assert evaluate(headers) in (None, 304, 412)


# --- If-Range -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, True),
        (ETAG, True),
        (f" {ETAG}\t", True),
        ('"v2"', False),
        ('W/"v1"', False),  # a weak tag never matches
        ("*", False),
        (f"{ETAG}, {ETAG}", False),  # one validator, not a list
        ("v1", False),
        ('"v1', False),
        (SAME, True),  # last_modified's microseconds are dropped
        (SAME_RFC850, True),
        (SAME_ASCTIME, True),
        (EARLIER, False),
        (LATER, False),  # only an exact date will do (§13.1.5)
        ("Mon, 06 May 2024 07:08:09 UTC", False),
        ("garbage", False),
        ("", False),
    ],
)
def test_if_range(header: str | None, expected: bool) -> None:
    assert if_range_allows_partial(header, ETAG, LAST_MODIFIED) is expected


def test_if_range_with_a_weak_current_etag() -> None:
    assert if_range_allows_partial('"v1"', 'W/"v1"', LAST_MODIFIED) is False
    assert if_range_allows_partial('W/"v1"', 'W/"v1"', LAST_MODIFIED) is False
    assert if_range_allows_partial(SAME, 'W/"v1"', LAST_MODIFIED) is True


@given(aware_datetimes)
def test_if_range_date_matches_only_its_own_second(when: datetime) -> None:
    assert if_range_allows_partial(format_http_date(when), ETAG, when)
    assert not if_range_allows_partial(format_http_date(when + timedelta(seconds=1)), ETAG, when)
    assert not if_range_allows_partial(format_http_date(when - timedelta(seconds=1)), ETAG, when)


@given(st.text())
def test_if_range_never_raises(header: str) -> None:
    assert isinstance(if_range_allows_partial(header, ETAG, LAST_MODIFIED), bool)
