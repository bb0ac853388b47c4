from __future__ import annotations

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
