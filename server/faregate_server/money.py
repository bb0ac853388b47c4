"""Prices and costs in integer nano-USD.

Config prices are written in USD per million tokens; they are converted once,
at load, into integer nano-USD per million tokens. A cost is computed from
integer token counts and rounded up to the next nano-dollar, so faregate never
under-counts. No float ever touches money.

An amount read from a config fits in int64 (SQLite, Redis and protobuf all store
int64): its size is checked on the decimal, before any integer is built, so a
written exponent (`1e999999`) is refused at once, never expanded.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, DecimalException

NANO_USD_PER_USD = 1_000_000_000
TOKENS_PER_MTOK = 1_000_000
MAX_NANO_USD = 2**63 - 1
"""The largest amount: the int64 maximum."""
_MAX_USD = Decimal(MAX_NANO_USD).scaleb(-9)
_NANO = Decimal(1).scaleb(-9)


class MoneyFormatError(ValueError):
    """A configured amount is not an exact non-negative number of nano-USD."""


def usd_to_nano_usd(value: object) -> int:
    """Converts a config amount in USD (int, str or YAML float) to nano-USD exactly.

    YAML floats are read through their shortest decimal repr, so `0.15` is 0.15.

    Raises:
        MoneyFormatError: negative, not a number, more than `MAX_NANO_USD`, or
            finer than one nano-USD.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise MoneyFormatError(f"expected a number of USD, got {value!r}")
    try:
        usd = Decimal(str(value))
        if not usd.is_finite() or usd < 0:
            raise MoneyFormatError(f"expected a non-negative amount of USD, got {value!r}")
        if usd > _MAX_USD:
            raise MoneyFormatError(f"must be at most {_MAX_USD} USD")
        # Bounded above, the quantized amount has at most 19 digits; an exponent
        # far below a nano-USD quantizes to zero, so it is refused, never rounded.
        nanos = usd.quantize(_NANO)
        if nanos != usd:
            raise MoneyFormatError(f"{value!r} USD is finer than one nano-USD")
        return int(nanos.scaleb(9))
    except DecimalException:
        raise MoneyFormatError(f"expected a number of USD, got {value!r}") from None


def format_nano_usd(amount_nano_usd: int) -> str:
    """Renders nano-USD as a USD string for humans, e.g. `$0.000150000`."""
    sign = "-" if amount_nano_usd < 0 else ""
    whole, frac = divmod(abs(amount_nano_usd), NANO_USD_PER_USD)
    return f"{sign}${whole}.{frac:09d}"


_INPUT_PRICE = -1
"""A cache price left unset: it is the input price."""
_CACHE_PRICES = (
    "cached_input_nano_usd_per_mtok",
    "cache_write_nano_usd_per_mtok",
    "cache_write_1h_nano_usd_per_mtok",
)


@dataclass(frozen=True, slots=True)
class Price:
    """A model's token prices in nano-USD per million tokens.

    Input is priced by kind: read from the prompt cache, written to it (for
    five minutes or for an hour), or neither. A cache price left unset is
    the input price; config/models.py sets the defaults per provider.
    """

    input_nano_usd_per_mtok: int
    output_nano_usd_per_mtok: int
    cached_input_nano_usd_per_mtok: int = _INPUT_PRICE
    cache_write_nano_usd_per_mtok: int = _INPUT_PRICE
    cache_write_1h_nano_usd_per_mtok: int = _INPUT_PRICE

    def __post_init__(self) -> None:
        for name in _CACHE_PRICES:
            if getattr(self, name) == _INPUT_PRICE:
                object.__setattr__(self, name, self.input_nano_usd_per_mtok)

    def cost_nano_usd(
        self,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int = 0,
        cache_write_input_tokens: int = 0,
        cache_write_1h_input_tokens: int = 0,
    ) -> int:
        """The cost of a request: the exact sum over every kind of token,
        rounded up once, to the next nano-dollar.

        The cache counts are parts of `input_tokens` (and the hour's writes
        part of the writes), as domain.Usage has them; the rest of the input
        is priced as input.
        """
        plain_input = input_tokens - cached_input_tokens - cache_write_input_tokens
        scaled = (
            plain_input * self.input_nano_usd_per_mtok
            + output_tokens * self.output_nano_usd_per_mtok
        )
        if cached_input_tokens or cache_write_input_tokens:
            scaled += (
                cached_input_tokens * self.cached_input_nano_usd_per_mtok
                + (cache_write_input_tokens - cache_write_1h_input_tokens)
                * self.cache_write_nano_usd_per_mtok
                + cache_write_1h_input_tokens * self.cache_write_1h_nano_usd_per_mtok
            )
        return -(-scaled // TOKENS_PER_MTOK)
