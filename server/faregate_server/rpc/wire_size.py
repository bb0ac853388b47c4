"""The serialized size of a plain chat request, from values already read.

rpc/translate.py measures every request's serialized size (for
`server.max_request_bytes`) and reads each plain field (role and content of
each message, the names, limits, metadata and hints). From those values it
sums here the size the request would have if it held nothing else: no
field beyond plain chat (tools, response format, stop, top_p, seed,
reasoning...) and no message holding more than its role and text (parts,
tool calls, a tool call id, reasoning). When the two sizes are equal, it
holds nothing else, and translate need not read those fields at all: on a
upb message each read of an unset repeated field costs about as much as the
rest of its message's translation.

Every set field adds at least its tag's byte, so a request holding any field
this sum leaves out (the newer fields, or one a newer client sent that this
contract does not know) is larger than the sum: translate then reads every
field. The comparison can only send a plain request down that careful path,
never one with more down the plain path, provided the sum is exact for the
fields it counts, which tests/rpc/test_wire_size.py holds it to over random
requests. It follows protobuf's encoding, as upb writes it: a field's tag
is its number and wire type as a varint; strings and bytes are
length-prefixed UTF-8; a proto3 field without presence is written only when
it is not its default, one with presence (`optional`) whenever it is set;
negative integers and enum numbers take ten bytes; repeated enums are
packed; a map entry is a message that always holds its key and its value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from faregate_server.rpc.rules import AnyRouteRequest

_DOUBLE = 1 + 8
"""A double field numbered under 16: tag and 8 bytes."""


def varint_bytes(value: int) -> int:
    """The bytes `value` takes as a varint (a negative int32 or int64 takes ten)."""
    if value < 0:
        return 10
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def message_bytes(role: int, content: str) -> int:
    """The bytes a Message of this role number and content, holding nothing
    else, takes as an element of a request's `messages` (tag and length
    included). Called once per message: the common sizes take no call."""
    size = 0
    if role:
        size = 2 if 0 < role < 0x80 else 1 + varint_bytes(role)
    if content:
        encoded = len(content) if content.isascii() else len(content.encode())
        size += (2 if encoded < 0x80 else 1 + varint_bytes(encoded)) + encoded
    return (2 if size < 0x80 else 1 + varint_bytes(size)) + size


def request_bytes(
    messages_bytes: int,
    model: str,
    agent: str,
    budget_key: str,
    max_output_tokens: int | None,
    temperature: float | None,
    metadata: Mapping[str, str],
    additional_budget_keys: Sequence[str],
    request_id: str,
    hints_bytes: int,
) -> int:
    """The bytes of a request holding these plain fields and nothing else;
    `messages_bytes` is the sum of its messages' `message_bytes`, and
    `hints_bytes` its hint fields' `hint_bytes` (0 when it sets none)."""
    size = messages_bytes + hints_bytes
    if model:  # field 1
        size += _text_field(1, model)
    if agent:  # field 3
        size += _text_field(1, agent)
    if budget_key:  # field 4
        size += _text_field(1, budget_key)
    if max_output_tokens is not None:  # field 5
        size += 1 + varint_bytes(max_output_tokens)
    if temperature is not None:  # field 6
        size += _DOUBLE
    if metadata:  # field 7
        for key, value in metadata.items():
            entry = _text_field(1, key) + _text_field(1, value)
            size += 1 + varint_bytes(entry) + entry
    if additional_budget_keys:  # field 16
        for key in additional_budget_keys:
            size += _text_field(2, key)
    if request_id:  # field 17
        size += _text_field(2, request_id)
    return size


def hint_bytes(request: AnyRouteRequest) -> int:
    """The bytes of the request's routing hint fields (8 to 15)."""
    size = 0
    for number in (request.prefer, request.task, request.fallback):  # fields 8, 13, 14
        if number:
            size += 1 + varint_bytes(number)
    if request.HasField("min_quality"):  # field 9
        size += _DOUBLE
    for field in ("max_cost_nano_usd", "min_context_tokens"):  # fields 10 and 12
        if request.HasField(field):
            size += 1 + varint_bytes(getattr(request, field))
    capabilities = request.required_capabilities  # field 11, packed
    if capabilities:
        packed = sum(varint_bytes(number) for number in capabilities)
        size += 1 + varint_bytes(packed) + packed
    if request.explain:  # field 15
        size += 2
    return size


def _text_field(tag_bytes: int, text: str) -> int:
    encoded = len(text) if text.isascii() else len(text.encode())
    return tag_bytes + (1 if encoded < 0x80 else varint_bytes(encoded)) + encoded
