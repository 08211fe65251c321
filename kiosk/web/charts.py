"""The owner page's pictures of the day, as geometry for server-rendered SVG: no chart library,
no script, no inline style (the page's Content-Security-Policy allows neither); the templates
draw what these pure functions compute (``templates/charts.html``), and the stylesheet colours it
by class.

- ``hour_chart``: entries per hour of today beside the same weekday last week, two bars per
  hour, a value axis with round ticks, hour labels every three hours, the current hour marked.
- ``refusal_rows``: today's refusals by reason, most frequent first, each a bar as long as its
  share of the largest, with the reason in the owner's words.
- ``gauge``: a fill fraction for the occupancy bar.

Units: the hour chart's coordinates are in its viewBox (``WIDTH`` x ``HEIGHT``; the page scales it
to the card's width, so it reads on a phone and a laptop alike); the refusal bars' widths are
percentages of a 100-unit viewBox. Counts are non-negative ints; anything else counts as 0 (they
are read from another process's data).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kiosk.web.words import reason_words

HOURS = 24
WIDTH = 400
HEIGHT = 200
# The plot's area inside the viewBox: room on the left for the value axis, below for the hours.
LEFT, RIGHT, TOP, BOTTOM = 36.0, 394.0, 10.0, 176.0
LABEL_EVERY_HOURS = 3
SERIES = ("last_week", "today")  # left bar, right bar of each hour


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar: its box in the viewBox, its count, its series (``today`` or ``last_week``) and
    its tooltip."""

    series: str
    hour: int
    value: int
    x: float
    y: float
    width: float
    height: float
    title: str


@dataclass(frozen=True, slots=True)
class Tick:
    """A line across the plot at a round count, and its label."""

    value: int
    y: float


@dataclass(frozen=True, slots=True)
class HourLabel:
    hour: int
    x: float
    text: str


@dataclass(frozen=True, slots=True)
class HourChart:
    """The entries-per-hour chart as drawn: ``bars`` (zero bars left out), ``ticks`` (0 up to
    ``top``), ``labels``, ``now_x`` (the middle of the current hour, None: not today), ``empty``
    (nothing to draw: neither day had an entry) and ``summary`` (the chart in one sentence, for
    screen readers)."""

    width: int
    height: int
    left: float
    right: float
    top_y: float
    bottom_y: float
    top: int
    bars: list[Bar] = field(default_factory=list)
    ticks: list[Tick] = field(default_factory=list)
    labels: list[HourLabel] = field(default_factory=list)
    now_x: float | None = None
    empty: bool = True
    summary: str = ""


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return value


def _hours(counts: Sequence[object]) -> list[int]:
    """``counts`` as exactly ``HOURS`` non-negative ints (missing hours are 0)."""
    values = [_count(v) for v in list(counts)[:HOURS]]
    return values + [0] * (HOURS - len(values))


def nice_scale(largest: int) -> tuple[int, int]:
    """(step, top) of a value axis for counts up to ``largest``: the step is 1, 2 or 5 times a
    power of ten giving at most five steps, and the top the first multiple of the step at or
    above ``largest`` (never below 1). ``nice_scale(7) == (2, 8)``, ``nice_scale(120) == (50,
    150)``."""
    largest = max(0, largest)
    if largest <= 1:
        return 1, 1
    wanted = largest / 4
    power = 10 ** math.floor(math.log10(wanted)) if wanted >= 1 else 1
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= wanted)
    return step, step * math.ceil(largest / step)


def _round(value: float) -> float:
    return round(value, 2)


def _entries(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def hour_chart(
    today: Sequence[object],
    last_week: Sequence[object],
    *,
    current_hour: int | None = None,
    compare_words: str = "same day last week",
) -> HourChart:
    """The chart of entries per local hour: ``today`` and ``last_week`` are 24 counts each (hour
    0 first; fewer are padded with zeros, more are cut). ``current_hour`` (0-23) is marked;
    ``compare_words`` names the other day in tooltips ("last Monday")."""
    series = {"today": _hours(today), "last_week": _hours(last_week)}
    largest = max(max(series["today"]), max(series["last_week"]))
    step, top = nice_scale(largest)
    plot_h = BOTTOM - TOP
    slot = (RIGHT - LEFT) / HOURS
    bar_w = slot * 0.38
    gap = (slot - 2 * bar_w) / 2

    def y_of(value: int) -> float:
        return BOTTOM - plot_h * value / top

    bars = []
    for hour in range(HOURS):
        span = f"{hour:02d}:00–{(hour + 1) % 24:02d}:00"
        for index, name in enumerate(SERIES):
            value = series[name][hour]
            if value == 0:
                continue
            x = LEFT + hour * slot + gap + index * bar_w
            who = "today" if name == "today" else compare_words
            bars.append(
                Bar(
                    series=name,
                    hour=hour,
                    value=value,
                    x=_round(x),
                    y=_round(y_of(value)),
                    width=_round(bar_w),
                    height=_round(BOTTOM - y_of(value)),
                    title=f"{span}: {_entries(value)} {who}",
                )
            )
    ticks = [Tick(value=v, y=_round(y_of(v))) for v in range(0, top + 1, step)]
    labels = [
        HourLabel(hour=h, x=_round(LEFT + (h + 0.5) * slot), text=f"{h:02d}")
        for h in range(0, HOURS, LABEL_EVERY_HOURS)
    ]
    now_x = None
    if current_hour is not None and 0 <= current_hour < HOURS:
        now_x = _round(LEFT + (current_hour + 0.5) * slot)
    total_today, total_before = sum(series["today"]), sum(series["last_week"])
    if largest == 0:
        summary = f"No entries today, none {compare_words}."
    else:
        busiest = max(range(HOURS), key=lambda h: (series["today"][h], -h))
        summary = f"{_entries(total_today)} today, {_entries(total_before)} {compare_words}."
        if total_today:
            summary += (
                f" Busiest hour today: {busiest:02d}:00 ({_entries(series['today'][busiest])})."
            )
    return HourChart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        right=RIGHT,
        top_y=TOP,
        bottom_y=BOTTOM,
        top=top,
        bars=bars,
        ticks=ticks,
        labels=labels,
        now_x=now_x,
        empty=largest == 0,
        summary=summary,
    )


@dataclass(frozen=True, slots=True)
class RefusalRow:
    """One reason's refusals: the reason, its words, the count and the bar's length (0-100, the
    largest count's bar is 100)."""

    reason: str
    words: str
    count: int
    width: float


def refusal_rows(counts: Mapping[str, object]) -> list[RefusalRow]:
    """Refusals by reason (reason -> count) as bars, most frequent first, then by reason; reasons
    with none are left out. A reason from a newer release keeps its text (``reason_words``)."""
    clean = {str(reason): _count(n) for reason, n in counts.items()}
    clean = {reason: n for reason, n in clean.items() if n > 0}
    if not clean:
        return []
    largest = max(clean.values())
    ordered = sorted(clean.items(), key=lambda item: (-item[1], item[0]))
    return [
        RefusalRow(reason, reason_words(reason), n, _round(100.0 * n / largest))
        for reason, n in ordered
    ]


def gauge(value: int | None, full: int | None) -> float | None:
    """How full a bar showing ``value`` of ``full`` is, 0-100 (capped; None when either is
    unknown or ``full`` is not positive)."""
    if value is None or full is None or full <= 0:
        return None
    return _round(min(100.0, 100.0 * max(0, value) / full))
