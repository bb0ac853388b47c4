"""The upstream JSON codec decodes every document exactly as `json.loads` does,
edges included, and encodes the same JSON as `json.dumps`."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from faregate_server.upstream.providers.json_codec import decode_json, encode_json
from hypothesis import given
from hypothesis import strategies as st

_EDGES = [
    '{"a": 1, "a": 2}',
    "1e400",
    "-1e400",
    "NaN",
    "-Infinity",
    "-0",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    '{"prompt_tokens": 1000000000000000000000000000000, "completion_tokens": 1}',
    '"\\ud800"',
    '"\\ud83d\\ude00"',
    "1.5e-400",
    "5e-324",
    '"\\u0000"',
    " {} ",
]
_MALFORMED = ['{"a":1}x', "[1,]", '"\t"', '"\x00"', "", "\ufeff{}", "[" * 100_000]


def _same(a: Any, b: Any) -> bool:
    """Equal, with the same types throughout, NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or repr(a) == repr(b)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[key], b[key]) for key in a)
    return bool(a == b)


@pytest.mark.parametrize("text", _EDGES)
def test_edges_decode_as_the_standard_library_decodes_them(text: str) -> None:
    assert _same(decode_json(text), json.loads(text))
    assert _same(decode_json(text.encode(errors="surrogatepass")), json.loads(text))


def test_an_integer_past_64_bits_stays_exact() -> None:
    assert decode_json(b'{"usage": {"prompt_tokens": 100000000000000000000}}') == {
        "usage": {"prompt_tokens": 10**20}
    }


def test_utf16_and_a_byte_order_mark_decode_as_the_standard_library_decodes_them() -> None:
    for data in ('{"a": "\u00e9"}'.encode("utf-16"), b'\xef\xbb\xbf{"a": 1}'):
        assert _same(decode_json(data), json.loads(data))


@pytest.mark.parametrize("text", _MALFORMED)
def test_malformed_documents_fail_as_the_standard_library_fails(text: str) -> None:
    with pytest.raises((ValueError, RecursionError)) as expected:
        json.loads(text)
    with pytest.raises(expected.type):
        decode_json(text)


_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(_VALUES)
def test_any_document_decodes_as_the_standard_library_decodes_it(value: Any) -> None:
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False)):
        assert _same(decode_json(text), json.loads(text))


_FINITE_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(_FINITE_VALUES)
def test_an_encoded_value_is_the_same_json(value: Any) -> None:
    assert _same(json.loads(encode_json(value)), json.loads(json.dumps(value)))


def test_what_orjson_cannot_encode_the_standard_library_does() -> None:
    assert (
        encode_json({"model": "\udc80", "big": 10**30})
        == json.dumps({"model": "\udc80", "big": 10**30}).encode()
    )
