"""Money as integers: micro-USD everywhere, so totals compare exactly."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

MICROS_PER_USD = 1_000_000


def usd_to_micros(usd: float | Decimal | str) -> int:
    """Round a dollar amount to whole micro-USD (half up), via Decimal to avoid float drift."""
    return int((Decimal(str(usd)) * MICROS_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def micros_to_usd(micros: int) -> float:
    """Dollars for display and evidence; totals stay integer micro-USD."""
    return micros / MICROS_PER_USD


def fmt_usd(micros: int) -> str:
    """Human dollars: $0.0042, $12.34, $1,234."""
    usd = micros_to_usd(micros)
    if abs(usd) >= 1000:
        return f"${usd:,.0f}"
    if abs(usd) >= 1:
        return f"${usd:,.2f}"
    return f"${usd:.4f}"
