"""Certificate subjects as values: RFC 4514 distinguished names, compared by meaning.

A subject is written as a string (`O=Acme,CN=agent-1`), but two strings can
name one subject: gRPC reports a certificate's subject in RFC 2253 order,
which is the certificate's own order reversed (`CN=agent-1,O=Acme` for the
usual O-then-CN certificate), and people write either order, in either
case, with spaces after the commas. `parse_subject` turns a string into a
`Subject` that is equal for every such spelling:

- the name is split into its RDNs at unescaped `,` and each RDN into its
  attributes at unescaped `+`, and each into type `=` value;
- attribute types are case-insensitive and trimmed; the dotted OIDs of the
  RFC 4514 keywords (`2.5.4.3`, `OID.2.5.4.3`) mean the keyword (`CN`);
- values are unescaped (`\\,`, `\\+`, `\\"`, `\\\\`, `\\<hex><hex>` as UTF-8
  bytes) and, apart from unescaped spaces at either end, compared exactly,
  case included;
- the order of RDNs, and of attributes within an RDN, does not matter: the
  comparison is of multisets.

Anything else (an RDN with no `=`, an empty type or value, a dangling
escape) is not a subject, and `parse_subject` raises `ValueError` saying why.
"""

from __future__ import annotations

import functools

_Attribute = tuple[str, str]
"""(type, value), the type upper-cased."""
Subject = tuple[tuple[_Attribute, ...], ...]
"""The RDNs, each a sorted tuple of attributes, in sorted order: a canonical
form, equal for every spelling of one name, and hashable."""

# RFC 4514, section 3: the keywords every implementation knows, by OID.
_KEYWORDS_BY_OID = {
    "2.5.4.3": "CN",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.6": "C",
    "2.5.4.9": "STREET",
    "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.1": "UID",
}
_HEX = frozenset("0123456789abcdefABCDEF")


def parse_subject(text: str) -> Subject:
    """The canonical form of a distinguished name written as in RFC 4514.

    Raises:
        ValueError: `text` is not a distinguished name; the message says why.
    """
    rdns = [
        tuple(sorted(_attribute(part) for part in _split(rdn, "+"))) for rdn in _split(text, ",")
    ]
    return tuple(sorted(rdns))


@functools.lru_cache(maxsize=1024)
def presented_subject(text: str) -> Subject | None:
    """`parse_subject` for a subject a client presented, None if it is none.

    Cached: a client's subject is the same on every call of its connection.
    """
    try:
        return parse_subject(text)
    except ValueError:
        return None


def _split(text: str, separator: str) -> list[str]:
    """`text` cut at every `separator` that is not escaped (escapes kept)."""
    parts, start, index = [], 0, 0
    while index < len(text):
        if text[index] == "\\":
            index += 2
            continue
        if text[index] == separator:
            parts.append(text[start:index])
            start = index + 1
        index += 1
    parts.append(text[start:])
    return parts


def _attribute(text: str) -> _Attribute:
    kind, equals, value = text.partition("=")
    kind = kind.strip().upper()
    if not equals or not kind or "\\" in kind:
        raise ValueError(f"{text.strip()!r} is not type=value")
    kind = _KEYWORDS_BY_OID.get(kind.removeprefix("OID."), kind)
    unescaped = _unescape(value)
    if not unescaped:
        raise ValueError(f"{text.strip()!r} has an empty value")
    return kind, unescaped


def _unescape(value: str) -> str:
    """The value with its escapes resolved and unescaped end spaces trimmed."""
    raw = bytearray()
    # Where the trailing unescaped spaces may start: an escaped space stays.
    keep_through = 0
    index = len(value) - len(value.lstrip(" "))
    while index < len(value):
        char = value[index]
        if char == "\\":
            pair = value[index + 1 : index + 3]
            if len(pair) == 2 and set(pair) <= _HEX:
                raw.append(int(pair, 16))
                index += 3
            elif index + 1 < len(value):
                raw += value[index + 1].encode()
                index += 2
            else:
                raise ValueError(f"{value.strip()!r} ends in a lone backslash")
            keep_through = len(raw)
            continue
        raw += char.encode()
        if char != " ":
            keep_through = len(raw)
        index += 1
    try:
        return raw[:keep_through].decode()
    except UnicodeDecodeError:
        raise ValueError(f"{value.strip()!r} escapes bytes that are not UTF-8") from None
