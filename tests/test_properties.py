"""Property-based tests of the header parser and the key formats."""

from __future__ import annotations

import re
import string
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postkey import InvalidHeader, InvalidKey
from postkey._headers import FORBIDDEN_HEADERS, format_header_text, parse_headers
from postkey._keys import check_key, mychat_key, new_key, parse_mychat_key

TOKEN = st.text(alphabet=string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~", min_size=1)
VALUE = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=40,
).map(lambda v: v.strip(" \t"))
PAIRS = st.lists(
    st.tuples(TOKEN.filter(lambda n: n.lower() not in FORBIDDEN_HEADERS), VALUE), max_size=20
)


@given(PAIRS)
def test_formatting_then_parsing_gives_the_same_headers(pairs: list[tuple[str, str]]) -> None:
    text = format_header_text(pairs)
    assert parse_headers(text) == tuple(pairs)
    assert parse_headers(text.replace("\r\n", "\n")) == tuple(pairs)
    assert parse_headers(dict(pairs)) == tuple(dict(pairs).items())


@given(st.text(max_size=200))
def test_any_text_is_parsed_or_refused_with_invalid_header(text: str) -> None:
    try:
        pairs = parse_headers(text)
    except InvalidHeader:
        return
    for name, value in pairs:
        assert re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name)
        assert not set(value) & {"\r", "\n", "\0"}
        assert all(ord(c) <= 0xFF for c in value)


@given(PAIRS, st.sampled_from(["\r", "\n", "\0", "\r\n"]), st.integers(0, 39))
def test_injected_line_breaks_in_values_are_always_refused(
    pairs: list[tuple[str, str]], bad: str, at: int
) -> None:
    value = "abc" + "x" * 40
    with pytest.raises(InvalidHeader):
        parse_headers([*pairs, ("X-Inject", value[:at] + bad + "Evil: 1" + value[at:])])


def test_default_keys_are_unique_hex() -> None:
    keys = {new_key() for _ in range(100_000)}
    assert len(keys) == 100_000
    assert all(re.fullmatch(r"[0-9a-f]{32}", k) and check_key(k) == k for k in keys)


@given(
    st.sampled_from(["POST", "GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)),
)
def test_mychat_keys_round_trip(method: str, when: datetime) -> None:
    key = mychat_key(method, when)
    assert check_key(key) == key
    parsed = parse_mychat_key(key)
    assert parsed is not None
    prefix, guid, stamp = parsed
    assert prefix == f"http{method.lower()}_async"
    assert guid.version == 4
    assert stamp == when.replace(microsecond=when.microsecond // 1000 * 1000)


@given(st.text(max_size=300))
def test_check_key_accepts_exactly_the_alphabet(key: str) -> None:
    ok = 1 <= len(key) <= 250 and re.fullmatch(r"[A-Za-z0-9_.:~{}-]+", key) is not None
    if ok:
        assert check_key(key) == key
    else:
        with pytest.raises(InvalidKey):
            check_key(key)
