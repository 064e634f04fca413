"""Progress bars for long work (seeding, `audit export`, benchmark rounds): on a terminal only.

One place decides how progress looks and when it shows, so every long
command behaves the same: a tqdm bar on stderr when stderr is a terminal,
nothing at all otherwise (a log file, a pipe or CI gets no carriage returns
or escape codes; the commands' own result lines say what was done).
``TQDM_DISABLE=1`` in the environment turns the bars off everywhere.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TextIO

from tqdm import tqdm

_WITH_TOTAL = "{l_bar}{bar}| {n:,}/{total:,} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"
_COUNT_ONLY = "{desc}: {n:,}{unit} [{elapsed}, {rate_noinv_fmt}{postfix}]"


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str,
    stream: TextIO | None = None,
    enabled: bool = True,
) -> tqdm:
    """A bar counting ``unit`` of ``total`` (or just a count and a rate when the total is unknown).

    Use it as a context manager (``with progress(...) as bar: bar.update(n)``)
    or wrap an iterable. ``stream`` defaults to stderr; the bar is drawn only
    when that stream is a terminal and ``enabled`` is true. Lines printed while
    it is drawn go through ``bar.write(line, file=sys.stderr)`` (tqdm's default
    file is stdout) so they do not tear the bar. Counts read 1,000,000 and
    rates 5.2k/s (tqdm's scaling alone would show 7 events as "7.00").
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    stream = stream or sys.stderr
    width = _width(stream)
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,  # for the rate; the counts are formatted below
        bar_format=_WITH_TOTAL if total is not None else _COUNT_ONLY,
        file=stream,
        # None: tqdm turns itself off when the stream is not a terminal.
        disable=None if enabled else True,
        ncols=width,
        nrows=None if width is None else 24,
        dynamic_ncols=width is None,
        leave=True,
    )


def _width(stream: TextIO) -> int | None:
    """None to follow the terminal's size; 80 columns for a terminal that reports none.

    A pseudo-terminal nobody sized (``script`` under a pipe, some CI runners)
    reports 0 columns and 0 rows, and tqdm would then draw nothing at all.
    """
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return None
    return None if columns > 0 else 80
