"""Human output (aligned tables, money with thousands separators) and machine output (--json)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from lending_grpc.core import plural


def money(value: Decimal) -> str:
    """110000.00 -> '110,000.00' (exact: Decimal formatting, never float)."""
    return f"{value:,.2f}"


count = plural.count  # '1 installment', '2 installments', '0 loans'


def instant(value: dt.datetime | None) -> str:
    """A UTC time to the second, '2026-11-26 09:38:06Z'; '-' when absent."""
    if value is None:
        return "-"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def day(value: dt.date | None) -> str:
    return value.isoformat() if value is not None else "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; columns whose index is in ``right`` are right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if index in right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def fields(pairs: Sequence[tuple[str, str]]) -> str:
    """'label   value' lines with the values aligned."""
    width = max(len(label) for label, _ in pairs)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in pairs)


def plain(value: Any) -> Any:
    """Dataclasses, Decimals, dates and enums as JSON-ready values (see `to_json`)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, Decimal):
        return str(value)  # the wire's exact decimal string, e.g. "110000.00"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def to_json(value: Any) -> str:
    """Machine output: money as exact decimal strings, dates ISO 8601, times UTC with Z."""
    return json.dumps(plain(value), indent=2)
