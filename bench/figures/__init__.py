"""The figures of one fleet run, computed from the client's records and the upstream's counts
(``run``), written as tables (``tables``), and the bars of the issues checked against them
(``bars``: ``bars`` for the fleet benchmark's own scenarios, ``learning_bars`` for issue 13's,
limits nobody states)."""

from __future__ import annotations

from bench.figures.bars import Verdict, bars, learning_bars
from bench.figures.run import (
    FOLLOW_WINDOW_S,
    RunFigures,
    compute,
    follow_times,
    jain,
    percentile,
)
from bench.figures.tables import HEADER, LEARNING_HEADER, learning_table, row, table

__all__ = [
    "FOLLOW_WINDOW_S",
    "HEADER",
    "LEARNING_HEADER",
    "RunFigures",
    "Verdict",
    "bars",
    "compute",
    "follow_times",
    "jain",
    "learning_bars",
    "learning_table",
    "percentile",
    "row",
    "table",
]
