"""Distinguished names compare by meaning (RFC 4514), not by spelling."""

from __future__ import annotations

import pytest
from faregate_server.security.distinguished_names import parse_subject, presented_subject


@pytest.mark.parametrize(
    "spelling",
    [
        "CN=agent-1,O=Acme",
        "O=Acme,CN=agent-1",
        "o=Acme, cn=agent-1",
        " CN = agent-1 , O = Acme ",
        "OID.2.5.4.3=agent-1,2.5.4.10=Acme",
        "CN=agent\\2D1,O=Acme",  # a hex escape of "-"
    ],
)
def test_every_spelling_of_one_name_is_one_subject(spelling: str) -> None:
    assert parse_subject(spelling) == parse_subject("CN=agent-1,O=Acme")


@pytest.mark.parametrize(
    "other",
    [
        "CN=Agent-1,O=Acme",  # values keep their case
        "CN=agent-1",  # an attribute fewer
        "CN=agent-1,O=Acme,O=Acme",  # a multiset: a repeat counts
        "CN=agent-1+O=Acme",  # one RDN of two attributes is not two RDNs
        "CN=agent-1,OU=Acme",
    ],
)
def test_a_different_name_is_a_different_subject(other: str) -> None:
    assert parse_subject(other) != parse_subject("CN=agent-1,O=Acme")


def test_escapes_keep_separators_and_spaces_inside_values() -> None:
    assert parse_subject("CN=a\\,b\\+c,O=x") == ((("CN", "a,b+c"),), (("O", "x"),))
    assert parse_subject("CN=\\ padded\\ ") == ((("CN", " padded "),),)
    assert parse_subject("CN=caf\\C3\\A9") == ((("CN", "café"),),)
    # Attributes within an RDN are unordered too.
    assert parse_subject("O=x+CN=a") == parse_subject("cn=a+o=x")


@pytest.mark.parametrize(
    "text", ["", "agent-1", "CN=", "=agent-1", "CN=a,", "CN=a\\", "CN=\\FF\\FE", "C\\N=a"]
)
def test_what_is_not_a_name_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_subject(text)
    assert presented_subject(text) is None
