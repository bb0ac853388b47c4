from __future__ import annotations

import math
from fractions import Fraction

import pytest
from faregate_server.money import MoneyFormatError, Price, format_nano_usd, usd_to_nano_usd
from hypothesis import given
from hypothesis import strategies as st


@pytest.mark.parametrize(
    ("value", "nano_usd"),
    [(0.15, 150_000_000), ("2.50", 2_500_000_000), (5, 5_000_000_000), ("0.000000001", 1)],
)
def test_usd_amounts_convert_exactly(value: object, nano_usd: int) -> None:
    assert usd_to_nano_usd(value) == nano_usd


@pytest.mark.parametrize("value", [-1, "abc", "0.0000000001", True, None, float("inf")])
def test_inexact_or_bad_amounts_are_rejected(value: object) -> None:
    with pytest.raises(MoneyFormatError):
        usd_to_nano_usd(value)


def test_cost_rounds_up_to_the_next_nano_dollar() -> None:
    price = Price(input_nano_usd_per_mtok=37_500_000, output_nano_usd_per_mtok=0)  # $0.0375/M

    assert price.cost_nano_usd(1, 0) == 38  # 37.5 nano-USD
    assert price.cost_nano_usd(2, 0) == 75


@given(
    st.integers(0, 10**9),
    st.integers(0, 10**9),
    st.integers(0, 10**7),
    st.integers(0, 10**7),
)
def test_cost_is_never_under_counted(
    input_price: int, output_price: int, input_tokens: int, output_tokens: int
) -> None:
    cost = Price(input_price, output_price).cost_nano_usd(input_tokens, output_tokens)
    exact_times_million = input_tokens * input_price + output_tokens * output_price

    assert cost * 1_000_000 >= exact_times_million
    assert (cost - 1) * 1_000_000 < exact_times_million or cost == 0


def test_format_nano_usd_for_humans() -> None:
    assert format_nano_usd(1_500_000_001) == "$1.500000001"
    assert format_nano_usd(-5) == "-$0.000000005"


def test_openai_cached_input_is_priced_at_the_cached_rate() -> None:
    # gpt-4o: $2.50 input, $1.25 cached input, $10 output per 1M tokens.
    gpt_4o = Price(2_500_000_000, 10_000_000_000, cached_input_nano_usd_per_mtok=1_250_000_000)

    cost = gpt_4o.cost_nano_usd(50_000, 300, cached_input_tokens=48_000)

    assert cost == 2_000 * 2_500 + 48_000 * 1_250 + 300 * 10_000  # 68,000,000


def test_anthropic_cache_reads_and_both_lifetimes_of_writes_are_priced_apart() -> None:
    # Sonnet: $3 input, $3.75 five-minute write, $6 one-hour write, $0.30 read, $15 output.
    sonnet = Price(3_000_000_000, 15_000_000_000, 300_000_000, 3_750_000_000, 6_000_000_000)

    five_minutes = sonnet.cost_nano_usd(
        10 + 2_000 + 30_000, 12, cached_input_tokens=30_000, cache_write_input_tokens=2_000
    )
    mixed = sonnet.cost_nano_usd(
        10 + 2_000 + 30_000,
        12,
        cached_input_tokens=30_000,
        cache_write_input_tokens=2_000,
        cache_write_1h_input_tokens=500,
    )

    assert five_minutes == 10 * 3_000 + 2_000 * 3_750 + 30_000 * 300 + 12 * 15_000  # 16,710,000
    assert mixed == 10 * 3_000 + 1_500 * 3_750 + 500 * 6_000 + 30_000 * 300 + 12 * 15_000


def test_unset_cache_prices_are_the_input_price() -> None:
    price = Price(2_000_000_000, 8_000_000_000)

    assert price.cost_nano_usd(1_000, 10, 400, 300, 100) == price.cost_nano_usd(1_000, 10)


@given(
    plain=st.integers(0, 10**7),
    cached=st.integers(0, 10**7),
    write_5m=st.integers(0, 10**7),
    write_1h=st.integers(0, 10**7),
    output=st.integers(0, 10**6),
    prices=st.lists(st.integers(0, 10**11), min_size=5, max_size=5),
)
def test_a_cost_is_the_exact_sum_rounded_up_once(
    plain: int, cached: int, write_5m: int, write_1h: int, output: int, prices: list[int]
) -> None:
    price = Price(*prices)
    exact = Fraction(
        plain * prices[0]
        + output * prices[1]
        + cached * prices[2]
        + write_5m * prices[3]
        + write_1h * prices[4],
        1_000_000,
    )
    cost = price.cost_nano_usd(
        plain + cached + write_5m + write_1h, output, cached, write_5m + write_1h, write_1h
    )

    assert cost == math.ceil(exact)
