"""Judging reported usage: the shape of each count, then what the request made possible."""

from __future__ import annotations

import pytest
from faregate_server.domain import ImplausibleUsage, Usage, UsageFlaw
from faregate_server.money import Price
from faregate_server.upstream.usage import MISSING, judge_usage, reported_usage

PRICE = Price(1_000_000_000, 2_000_000_000)  # $1 and $2 per million tokens
WINDOW, CAP = 1000, 100
RESERVED = PRICE.cost_nano_usd(200, CAP)  # 200 counted input tokens, the cap's output


def _judge(input_tokens: int, output_tokens: int) -> object:
    return judge_usage(Usage(input_tokens, output_tokens), WINDOW, CAP, PRICE, RESERVED)


def test_whole_non_negative_counts_are_usage() -> None:
    assert reported_usage(12, 0) == Usage(12, 0)


@pytest.mark.parametrize(
    ("reported", "flaw", "kept"),
    [
        ((3.5, 1), UsageFlaw.NOT_INTEGER, '{"input_tokens":3.5,"output_tokens":1}'),
        ((12.0, 1), UsageFlaw.NOT_INTEGER, '{"input_tokens":12.0,"output_tokens":1}'),
        (("12", 1), UsageFlaw.NOT_INTEGER, '{"input_tokens":"12","output_tokens":1}'),
        ((True, 1), UsageFlaw.NOT_INTEGER, '{"input_tokens":true,"output_tokens":1}'),
        ((None, 1), UsageFlaw.NOT_INTEGER, '{"input_tokens":null,"output_tokens":1}'),
        ((1e17, 1), UsageFlaw.NOT_INTEGER, '{"input_tokens":1e+17,"output_tokens":1}'),
        ((float("inf"), 1), UsageFlaw.NOT_INTEGER, '{"input_tokens":Infinity,"output_tokens":1}'),
        ((1, -1), UsageFlaw.NEGATIVE, '{"input_tokens":1,"output_tokens":-1}'),
        ((MISSING, 1), UsageFlaw.MISSING, '{"output_tokens":1}'),
        (({"n": 1}, 1), UsageFlaw.NOT_INTEGER, '{"input_tokens":{"n":1},"output_tokens":1}'),
    ],
)
def test_a_count_that_is_not_a_whole_non_negative_number_is_implausible(
    reported: tuple[object, object], flaw: UsageFlaw, kept: str
) -> None:
    assert reported_usage(*reported) == ImplausibleUsage(flaw, kept)


def test_a_long_reported_value_is_kept_cut() -> None:
    usage = reported_usage("9" * 10_000, 10**80)
    assert isinstance(usage, ImplausibleUsage)
    assert len(usage.reported) < 200
    assert usage.reported.startswith('{"input_tokens":"\\"99999')


def test_usage_within_what_the_request_made_possible_stands() -> None:
    assert _judge(200, CAP) == Usage(200, CAP)
    assert _judge(0, 0) == Usage(0, 0)
    # More input than counted, paid for by output the answer did not use.
    assert _judge(300, CAP // 2) == Usage(300, CAP // 2)


@pytest.mark.parametrize(
    ("usage", "flaw"),
    [
        ((WINDOW + 1, 0), UsageFlaw.OVER_CONTEXT_WINDOW),
        ((10**17, 10**17), UsageFlaw.OVER_CONTEXT_WINDOW),
        ((200, CAP + 1), UsageFlaw.OVER_OUTPUT_CAP),
        ((201, CAP), UsageFlaw.OVER_RESERVATION),
        ((600, CAP), UsageFlaw.OVER_RESERVATION),  # three times the prompt
    ],
)
def test_usage_beyond_what_the_request_made_possible_is_implausible(
    usage: tuple[int, int], flaw: UsageFlaw
) -> None:
    judged = _judge(*usage)
    assert isinstance(judged, ImplausibleUsage)
    assert judged.flaw is flaw
    assert judged.reported == f'{{"input_tokens":{usage[0]},"output_tokens":{usage[1]}}}'


def test_no_report_and_an_implausible_one_pass_through() -> None:
    implausible = ImplausibleUsage(UsageFlaw.NEGATIVE, "{}")
    assert judge_usage(None, WINDOW, CAP, PRICE, RESERVED) is None
    assert judge_usage(implausible, WINDOW, CAP, PRICE, RESERVED) is implausible


@pytest.mark.parametrize("input_tokens", [201, 600, WINDOW])
def test_a_whole_answer_is_not_judged_against_its_reservation(input_tokens: int) -> None:
    # Believable (within the window and the cap), so it is the bill, however
    # far past the reservation: an overrun to charge, not a flaw.
    usage = Usage(input_tokens, CAP)
    assert judge_usage(usage, WINDOW, CAP, PRICE, None) == usage


def test_a_whole_answer_is_still_judged_against_the_window_and_the_cap() -> None:
    for usage, flaw in (
        (Usage(WINDOW + 1, 0), UsageFlaw.OVER_CONTEXT_WINDOW),
        (Usage(200, CAP + 1), UsageFlaw.OVER_OUTPUT_CAP),
    ):
        judged = judge_usage(usage, WINDOW, CAP, PRICE, None)
        assert isinstance(judged, ImplausibleUsage)
        assert judged.flaw is flaw
