"""JSON on the upstream wire: orjson where it can, the standard library where it cannot.

orjson encodes and decodes several times faster than `json`, which matters
on a path run for every request and every streamed event. The two differ
only at the edges, and there the standard library decides, so every input
decodes (or fails) exactly as it did before orjson:
- Decoding: what orjson refuses (NaN and Infinity literals, numbers past a
  double's range, lone surrogates, UTF-16 or a byte order mark, and anything
  malformed) is decoded again by `json.loads`, which returns its value or
  raises its own error. orjson reads an integer past 64 bits as a float
  where `json.loads` keeps it exact (a usage count of 10**30 must stay one),
  so a document with 19 digits in a row goes to `json.loads` at once; the
  check is one translation of the bytes. Everything else orjson reads as
  `json.loads` does.
- Encoding: orjson writes compact UTF-8 (`{"a":"é"}`, where `json.dumps`
  writes `{"a": "\\u00e9"}`): the same JSON to any parser, so upstreams see
  the same request. What orjson cannot encode (a lone surrogate, say from a
  config's escape, or an integer past 64 bits) is encoded by `json.dumps`.
  A NaN or infinity is no JSON, and orjson writes it as null: bodies carry
  none (the only float sent upstream, a temperature, is checked finite).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19
"""The shortest digit run that may be an integer orjson cannot hold (-2**63 - 1)."""


def decode_json(data: bytes | str) -> Any:
    """The value of a JSON document, as `json.loads` would decode it.

    Raises:
        ValueError: it is not JSON (`json.JSONDecodeError`, or
            `UnicodeDecodeError` for bytes that are no Unicode text).
        RecursionError: it nests deeper than `json.loads` can follow.
    """
    raw = data.encode(errors="surrogatepass") if isinstance(data, str) else data
    if _LONG_NUMBER not in raw.translate(_DIGITS_AS_ZEROS):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def encode_json(value: Any) -> bytes:
    """`value`, which holds no NaN or infinity, as a JSON document in UTF-8."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value).encode()
