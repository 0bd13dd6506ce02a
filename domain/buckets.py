"""Calendar buckets: the documents and slots that hold a moment, and those that cover a window.

Seven levels, each a document holding a few slots of the next: a year holds months, a
month its three decades (days 1-10, 11-20, 21-end), a decade its days, a day its four
quarters (6 hours), a quarter its hours, an hour its six 10-minute spans, a 10-minute
span its minutes. A moment lives in one slot of each level; a minute-aligned window
is covered by whole slots, the coarsest that fit, so it reads the year(s) for whole
months and at most two documents per finer level: 14 documents, each of a few slots,
for any window. (FerretDB reads a document in time that grows with its size: many
small levels cost less than a few wide ones.)
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

_STEP = {
    "day": dt.timedelta(days=1),
    "quarter": dt.timedelta(hours=6),
    "hour": dt.timedelta(hours=1),
    "tenmin": dt.timedelta(minutes=10),
    "minute": dt.timedelta(minutes=1),
}


class Level(NamedTuple):
    """Documents that span one ``doc_unit`` (id ``<prefix>:<start in doc_format>``), each
    holding slots of one ``slot_unit`` (key: the slot's start in ``slot_format``)."""

    prefix: str
    doc_unit: str
    slot_unit: str
    doc_format: str
    slot_format: str


LEVELS = (
    Level("Y", "year", "month", "%Y", "%m"),
    Level("M", "month", "decade", "%Y-%m", "%d"),
    Level("T", "decade", "day", "%Y-%m-%d", "%d"),
    Level("D", "day", "quarter", "%Y-%m-%d", "%H"),
    Level("Q", "quarter", "hour", "%Y-%m-%dT%H", "%H"),
    Level("H", "hour", "tenmin", "%Y-%m-%dT%H", "%M"),
    Level("X", "tenmin", "minute", "%Y-%m-%dT%H:%M", "%M"),
)


def floor(t: dt.datetime, unit: str) -> dt.datetime:
    """The start of the ``unit`` that holds ``t``."""
    t = t.replace(second=0, microsecond=0)
    if unit == "minute":
        return t
    if unit == "tenmin":
        return t.replace(minute=t.minute - t.minute % 10)
    t = t.replace(minute=0)
    if unit == "hour":
        return t
    if unit == "quarter":
        return t.replace(hour=t.hour - t.hour % 6)
    t = t.replace(hour=0)
    if unit == "day":
        return t
    if unit == "decade":
        return t.replace(day=min(t.day - 1, 20) // 10 * 10 + 1)
    t = t.replace(day=1)
    return t if unit == "month" else t.replace(month=1)


def following(t: dt.datetime, unit: str) -> dt.datetime:
    """The start of the ``unit`` after the one that starts at ``t``."""
    if unit in _STEP:
        return t + _STEP[unit]
    if unit == "decade" and t.day < 21:
        return t + dt.timedelta(days=10)
    return t.replace(year=t.year + 1, month=1, day=1) if t.month == 12 else t.replace(month=t.month + 1, day=1)


def place(t: dt.datetime) -> list[tuple[str, str]]:
    """(document, slot) that hold ``t`` on every level, documents without the partition."""
    minute = t.replace(second=0, microsecond=0)
    hour = minute.replace(minute=0)
    day = hour.replace(hour=0)
    month = day.replace(day=1)
    start = {
        "minute": minute,
        "tenmin": minute.replace(minute=minute.minute - minute.minute % 10),
        "hour": hour,
        "quarter": hour.replace(hour=hour.hour - hour.hour % 6),
        "day": day,
        "decade": day.replace(day=min(day.day - 1, 20) // 10 * 10 + 1),
        "month": month,
        "year": month.replace(month=1),
    }
    return [
        (f"{lv.prefix}:{start[lv.doc_unit]:{lv.doc_format}}", f"{start[lv.slot_unit]:{lv.slot_format}}")
        for lv in LEVELS
    ]


def doc_key(level: int, t: dt.datetime) -> str:
    """The document of ``LEVELS[level]`` that holds ``t`` (without the partition)."""
    lv = LEVELS[level]
    return f"{lv.prefix}:{floor(t, lv.doc_unit):{lv.doc_format}}"


def slot_key(level: int, t: dt.datetime) -> str:
    lv = LEVELS[level]
    return f"{floor(t, lv.slot_unit):{lv.slot_format}}"


def cover(start: dt.datetime, end: dt.datetime, level: int = 0) -> list[tuple[int, dt.datetime]]:
    """Minute-aligned [start, end) as whole slots, (level, slot start), coarsest where they fit."""
    unit = LEVELS[level].slot_unit
    if level == len(LEVELS) - 1:
        return _steps(start, end, level)
    first = start if floor(start, unit) == start else following(floor(start, unit), unit)
    last = floor(end, unit)
    if first >= last:
        return cover(start, end, level + 1)
    return cover(start, first, level + 1) + _steps(first, last, level) + cover(last, end, level + 1)


def _steps(start: dt.datetime, end: dt.datetime, level: int) -> list[tuple[int, dt.datetime]]:
    out, t = [], start
    while t < end:
        out.append((level, t))
        t = following(t, LEVELS[level].slot_unit)
    return out
