"""The window options shared by `loopline monitor` and `loopline loop`, parsed once, the same way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

WindowOpt = Annotated[
    str | None,
    typer.Option(
        "--window",
        "-w",
        help="Window length up to now (or --until), e.g. 7d, 24h (default: monitoring.window).",
        show_default=False,
    ),
]
SinceOpt = Annotated[
    str | None,
    typer.Option("--since", help="Window start, ISO 8601 (UTC unless an offset is given).", show_default=False),
]
UntilOpt = Annotated[
    str | None,
    typer.Option(
        "--until",
        help="Window end (exclusive), ISO 8601; default now (event time: the newest row's time).",
        show_default=False,
    ),
]
TimeOpt = Annotated[
    str | None,
    typer.Option(
        "--time",
        help="event: windows on model.time_column (rows count when they happened); wall: when they were "
        "scored or logged (default: monitoring.time).",
        show_default=False,
    ),
]


def time_basis(value: str | None) -> str | None:
    """`--time` as event or wall; a usage error names the option."""
    if value is None or value in ("event", "wall"):
        return value
    raise typer.BadParameter(f"must be event or wall, got {value!r}", param_hint="'--time'")


def when(value: str | None, option: str) -> datetime | None:
    """An ISO 8601 option value as an aware datetime (naive = UTC); a usage error names the option."""
    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"must be an ISO 8601 date or time like 2026-01-31 or 2026-01-31T12:00, got {value!r}",
            param_hint=f"'{option}'",
        ) from None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


def window_length(value: str | None) -> timedelta | None:
    """`--window` as a duration; a usage error names the option."""
    if value is None:
        return None
    from loopline.config import parse_duration

    try:
        return parse_duration(value)
    except ValueError:
        raise typer.BadParameter(
            f"must be a duration like 7d, 12h or 30m, got {value!r}", param_hint="'--window'"
        ) from None
