"""Calendar buckets (pure logic): every moment has one slot per level, and a window is
covered by whole slots, exactly once each minute, from few documents. The store built on
them, on the real FerretDB: tests/domain/test_analytics_store.py."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from domain import buckets
from domain.buckets import LEVELS, cover, doc_key, floor, following, place, slot_key

T0 = dt.datetime(2031, 3, 14, 9, 26, tzinfo=dt.UTC)


def windows(n: int, seed: int) -> list[tuple[dt.datetime, dt.datetime]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start = T0 + dt.timedelta(minutes=rng.randint(-800_000, 800_000))
        out.append((start, start + dt.timedelta(minutes=rng.choice([1, 9, 61, 1439, 1441, 20_000, 527_040]))))
    return out


@pytest.mark.parametrize(
    "t",
    [
        T0,
        dt.datetime(2031, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
        dt.datetime(2032, 2, 29, 0, 0, tzinfo=dt.UTC),
        dt.datetime(2031, 1, 31, 12, 0, tzinfo=dt.UTC),  # the third decade of a 31-day month
        dt.datetime(2031, 1, 20, 23, 59, tzinfo=dt.UTC),
    ],
)
def test_a_moment_has_one_slot_on_each_level_inside_its_document(t):
    assert place(t) == [(doc_key(level, t), slot_key(level, t)) for level in range(len(LEVELS))]
    for level, lv in enumerate(LEVELS):
        slot = floor(t, lv.slot_unit)
        assert slot <= t < following(slot, lv.slot_unit)
        last = following(slot, lv.slot_unit) - dt.timedelta(microseconds=1)
        assert doc_key(level, slot) == doc_key(level, last) == doc_key(level, t), "the slot lies in one document"


def test_decades_are_days_1_to_10_11_to_20_and_21_to_the_end():
    starts = [floor(dt.datetime(2031, 2, day, tzinfo=dt.UTC), "decade").day for day in range(1, 29)]
    assert starts == [1] * 10 + [11] * 10 + [21] * 8
    assert following(dt.datetime(2031, 2, 21, tzinfo=dt.UTC), "decade") == dt.datetime(2031, 3, 1, tzinfo=dt.UTC)
    assert following(dt.datetime(2031, 12, 1, tzinfo=dt.UTC), "month") == dt.datetime(2032, 1, 1, tzinfo=dt.UTC)


def test_a_window_is_covered_by_whole_slots_each_minute_once_from_at_most_14_documents():
    for start, end in windows(300, seed=5):
        slots = cover(start, end)
        spans = sorted((t, following(t, LEVELS[level].slot_unit)) for level, t in slots)
        assert spans[0][0] == start and spans[-1][1] == end, (start, end)
        gaps = [(a, b) for (_, a), (b, _) in zip(spans, spans[1:], strict=False) if a != b]
        assert gaps == [], f"{start} to {end}: a gap or an overlap"
        assert all(floor(t, LEVELS[level].slot_unit) == t for level, t in slots), (start, end)
        assert len({(level, doc_key(level, t)) for level, t in slots}) <= 14, (start, end)


def test_the_coarsest_slots_that_fit_are_used():
    start = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
    assert cover(start, dt.datetime(2032, 1, 1, tzinfo=dt.UTC)) == [(0, start.replace(month=m)) for m in range(1, 13)]
    assert cover(start, start + dt.timedelta(minutes=1)) == [(len(LEVELS) - 1, start)]
    assert buckets.cover(start, start) == []
