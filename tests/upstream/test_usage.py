"""Judging reported usage: the shape of each count, then what the request made possible."""

from __future__ import annotations

import pytest
from faregate_server.domain import ImplausibleUsage, Usage, UsageFlaw
from faregate_server.money import Price
from faregate_server.upstream.usage import (
    MISSING,
    anthropic_usage,
    judge_usage,
    openai_usage,
    reported_usage,
    usage_cost_nano_usd,
)

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


# Each provider's usage block, normalised: input holds the cache counts, output the reasoning.


def test_openai_cached_input_and_reasoning_are_parts_of_prompt_and_completion() -> None:
    raw = {
        "prompt_tokens": 2006,
        "completion_tokens": 300,
        "total_tokens": 2306,
        "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 192},
    }
    assert openai_usage(raw) == Usage(2006, 300, cached_input_tokens=1920, reasoning_tokens=192)


def test_openai_reasoning_outside_completion_tokens_is_counted_from_the_total() -> None:
    # Gemini's compatible endpoint: thinking is in the total, not in completion_tokens.
    raw = {"prompt_tokens": 758, "completion_tokens": 102, "total_tokens": 1725}
    assert openai_usage(raw) == Usage(758, 967, reasoning_tokens=865)
    # A total below its parts could only lower the charge: the parts stand.
    assert openai_usage({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 3}) == Usage(
        10, 5
    )


@pytest.mark.parametrize(
    "raw",
    [
        {"prompt_tokens": 7, "completion_tokens": 2},
        {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": None},
        {"prompt_tokens": 7, "completion_tokens": 2, "prompt_tokens_details": None},
        {"prompt_tokens": 7, "completion_tokens": 2, "completion_tokens_details": None},
        {"prompt_tokens": 7, "completion_tokens": 2, "prompt_tokens_details": {}},
        {
            "prompt_tokens": 7,
            "completion_tokens": 2,
            "prompt_tokens_details": {"cached_tokens": None},
        },
    ],
)
def test_openai_absent_or_null_details_are_zero(raw: dict[str, object]) -> None:
    assert openai_usage(raw) == Usage(7, 2)


@pytest.mark.parametrize(
    ("raw", "flaw", "kept"),
    [
        (
            {
                "prompt_tokens": 7,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": -1},
            },
            UsageFlaw.NEGATIVE,
            '{"input_tokens":7,"output_tokens":2,"cached_input_tokens":-1}',
        ),
        (
            {
                "prompt_tokens": 7,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 1.5},
            },
            UsageFlaw.NOT_INTEGER,
            '{"input_tokens":7,"output_tokens":2,"cached_input_tokens":1.5}',
        ),
        (
            {
                "prompt_tokens": 7,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": "3"},
            },
            UsageFlaw.NOT_INTEGER,
            '{"input_tokens":7,"output_tokens":2,"cached_input_tokens":"3"}',
        ),
        (
            {"prompt_tokens": 7, "completion_tokens": 2, "prompt_tokens_details": 5},
            UsageFlaw.NOT_INTEGER,
            '{"input_tokens":7,"output_tokens":2,"cached_input_tokens":"not an object"}',
        ),
        (
            {
                "prompt_tokens": 7,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 8},
            },
            UsageFlaw.PARTS_OVER_WHOLE,
            '{"input_tokens":7,"output_tokens":2,"cached_input_tokens":8}',
        ),
        (
            {
                "prompt_tokens": 7,
                "completion_tokens": 2,
                "completion_tokens_details": {"reasoning_tokens": True},
            },
            UsageFlaw.NOT_INTEGER,
            '{"input_tokens":7,"output_tokens":2,"reasoning_tokens":true}',
        ),
        (
            {
                "prompt_tokens": 7,
                "completion_tokens": 2,
                "completion_tokens_details": {"reasoning_tokens": 3},
            },
            UsageFlaw.PARTS_OVER_WHOLE,
            '{"input_tokens":7,"output_tokens":2,"reasoning_tokens":3}',
        ),
        (
            {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": "9"},
            UsageFlaw.NOT_INTEGER,
            '{"input_tokens":7,"output_tokens":2,"total_tokens":"9"}',
        ),
        (
            {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": -9},
            UsageFlaw.NEGATIVE,
            '{"input_tokens":7,"output_tokens":2,"total_tokens":-9}',
        ),
        (
            {"prompt_tokens": -7, "completion_tokens": 2, "total_tokens": -5},
            UsageFlaw.NEGATIVE,
            '{"input_tokens":-7,"output_tokens":2}',
        ),
    ],
)
def test_an_openai_block_that_lies_about_a_part_is_implausible(
    raw: dict[str, object], flaw: UsageFlaw, kept: str
) -> None:
    assert openai_usage(raw) == ImplausibleUsage(flaw, kept)


def test_an_absurd_total_is_output_that_the_judge_refuses() -> None:
    usage = openai_usage({"prompt_tokens": 200, "completion_tokens": 2, "total_tokens": 10**17})
    judged = judge_usage(usage, WINDOW, CAP, PRICE, RESERVED)
    assert isinstance(judged, ImplausibleUsage)
    assert judged.flaw is UsageFlaw.OVER_OUTPUT_CAP
    assert judged.reported == (
        f'{{"input_tokens":200,"output_tokens":{10**17 - 200},"reasoning_tokens":{10**17 - 202}}}'
    )


def test_no_usage_block_is_none_and_a_non_object_is_missing_counts() -> None:
    for read in (openai_usage, anthropic_usage):
        assert read(None) is None
        assert read({}) is None
        assert read([1, 2]) == ImplausibleUsage(UsageFlaw.MISSING, "{}")


def test_anthropic_input_is_the_sum_of_uncached_written_and_read() -> None:
    raw = {
        "input_tokens": 10,
        "cache_creation_input_tokens": 2000,
        "cache_read_input_tokens": 30000,
        "output_tokens": 12,
        "cache_creation": {"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 500},
        "service_tier": "standard",
    }
    assert anthropic_usage(raw) == Usage(32010, 12, 30000, 2000, 500)


def test_anthropic_without_a_breakdown_writes_for_five_minutes() -> None:
    raw: dict[str, object] = {
        "input_tokens": 10,
        "cache_creation_input_tokens": 2000,
        "output_tokens": 12,
    }
    assert anthropic_usage(raw) == Usage(2010, 12, 0, 2000, 0)
    raw = {**raw, "cache_read_input_tokens": None, "cache_creation": None}
    assert anthropic_usage(raw) == Usage(2010, 12, 0, 2000, 0)


@pytest.mark.parametrize(
    ("created", "five", "hour", "writes", "hour_writes"),
    [
        (2000, 1500, 500, 2000, 500),  # they agree
        (2000, 0, 0, 2000, 2000),  # writes of no stated lifetime: the dearer rate
        (2000, 1000, 0, 2000, 1000),
        (100, 1500, 500, 2000, 500),  # a breakdown larger than the total: the breakdown
        (0, 0, 700, 700, 700),
    ],
)
def test_an_anthropic_breakdown_that_disagrees_never_lowers_the_charge(
    created: int, five: int, hour: int, writes: int, hour_writes: int
) -> None:
    raw = {
        "input_tokens": 1,
        "output_tokens": 1,
        "cache_creation_input_tokens": created,
        "cache_creation": {"ephemeral_5m_input_tokens": five, "ephemeral_1h_input_tokens": hour},
    }
    assert anthropic_usage(raw) == Usage(1 + writes, 1, 0, writes, hour_writes)


def test_anthropic_thinking_is_part_of_the_output() -> None:
    raw = {"input_tokens": 5, "output_tokens": 40, "output_tokens_details": {"thinking_tokens": 30}}
    assert anthropic_usage(raw) == Usage(5, 40, reasoning_tokens=30)


@pytest.mark.parametrize(
    ("extra", "flaw", "kept"),
    [
        ({"cache_read_input_tokens": -1}, UsageFlaw.NEGATIVE, ',"cached_input_tokens":-1'),
        ({"cache_read_input_tokens": 2.0}, UsageFlaw.NOT_INTEGER, ',"cached_input_tokens":2.0'),
        (
            {"cache_creation_input_tokens": "9"},
            UsageFlaw.NOT_INTEGER,
            ',"cache_write_input_tokens":"9"',
        ),
        (
            {"cache_creation_input_tokens": False},
            UsageFlaw.NOT_INTEGER,
            ',"cache_write_input_tokens":false',
        ),
        (
            {"cache_creation": {"ephemeral_1h_input_tokens": -3}},
            UsageFlaw.NEGATIVE,
            ',"cache_write_1h_input_tokens":-3',
        ),
        (
            {"cache_creation": {"ephemeral_5m_input_tokens": 1e3}},
            UsageFlaw.NOT_INTEGER,
            ',"cache_write_5m_input_tokens":1000.0',
        ),
        (
            {"cache_creation": "lots"},
            UsageFlaw.NOT_INTEGER,
            ',"cache_write_5m_input_tokens":"not an object"'
            ',"cache_write_1h_input_tokens":"not an object"',
        ),
        (
            {"output_tokens_details": {"thinking_tokens": 4}},
            UsageFlaw.PARTS_OVER_WHOLE,
            ',"reasoning_tokens":4',
        ),
    ],
)
def test_an_anthropic_block_that_lies_about_a_part_is_implausible(
    extra: dict[str, object], flaw: UsageFlaw, kept: str
) -> None:
    raw = {"input_tokens": 5, "output_tokens": 3, **extra}
    assert anthropic_usage(raw) == ImplausibleUsage(
        flaw, '{"input_tokens":5,"output_tokens":3' + kept + "}"
    )


def test_the_judge_prices_every_kind_of_token() -> None:
    # Cache reads at a tenth of the input price: 1,000 input tokens of which
    # 900 read cost what 190 uncached ones do, within a reservation for 200.
    price = Price(1_000_000_000, 2_000_000_000, cached_input_nano_usd_per_mtok=100_000_000)
    usage = Usage(1000, CAP, cached_input_tokens=900)
    assert usage_cost_nano_usd(price, usage) == 190 * 1000 + CAP * 2000
    assert judge_usage(usage, WINDOW, CAP, price, RESERVED) == usage
    # Writes at twice the input price push the same input over it.
    price = Price(1_000_000_000, 2_000_000_000, cache_write_nano_usd_per_mtok=2_000_000_000)
    written = Usage(200, CAP, cache_write_input_tokens=1)
    judged = judge_usage(written, WINDOW, CAP, price, RESERVED)
    assert judged == ImplausibleUsage(
        UsageFlaw.OVER_RESERVATION,
        f'{{"input_tokens":200,"output_tokens":{CAP},"cache_write_input_tokens":1}}',
    )


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
