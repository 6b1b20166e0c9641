"""Plots of the reports: a per-scanner day timeline for utilization, a per-scanner chart for clock skew.

matplotlib (the Agg backend: no display needed) writes PNG; for ``.html``
the same figure is embedded as a base64 PNG in a small self-contained page
with the report's table, so it opens anywhere without a server or scripts.

The timeline's time axis fits the day's activity (:func:`time_axis`): from
a little before the first encounter to a little after the last one, ticked
at a round step labelled as clock times, so a morning of exams from 08:00
to 10:00 fills the width instead of being a sliver of a 24-hour axis. When
the lanes' activity fits in 24 hours but crosses midnight (an evening and
the night after it), the lanes share one time line, the next day's times
marked ``+1d``.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from niffler.common.atomic import atomic_write, write_bytes_atomic
from niffler.common.errors import InputError

__all__ = ["TimeAxis", "clock_label", "save_figure", "skew_figure", "time_axis", "utilization_figure"]

_BUSY = "#1f77b4"
_IDLE = "#f2c14e"
_BAD = "#d62728"
_OK = "#2ca02c"
#: Tick steps of the timeline, in hours: the smallest that gives at most _MAX_TICKS intervals is used.
_STEPS = (0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0)
_MAX_TICKS = 12
#: The narrowest time axis, in hours: a single short encounter is still drawn with context around it.
_MIN_SPAN = 1.0


@dataclass(frozen=True)
class TimeAxis:
    """The timeline's x axis, in hours since midnight of the study day: limits and tick step."""

    start: float
    end: float
    step: float

    @property
    def ticks(self) -> list[float]:
        count = round((self.end - self.start) / self.step)
        return [self.start + n * self.step for n in range(count + 1)]


def time_axis(starts: pd.Series, ends: pd.Series) -> TimeAxis:
    """Fit the axis to the activity: hours (since the day's midnight) of the encounters' starts and ends.

    The limits are the first start and the last end, each padded by a few
    minutes and rounded outwards to the tick step; the step is the smallest
    of quarter hours, half hours, 1, 2, 3, 4 or 6 hours that needs at most
    twelve intervals. The axis is at least an hour wide. It stays at or
    after midnight unless an encounter starts before it, and goes past 24 h
    only for an encounter that runs past midnight. No activity: the whole day.
    """
    values = pd.concat([pd.Series(starts, dtype=float), pd.Series(ends, dtype=float)]).dropna()
    if values.empty:
        return TimeAxis(0.0, 24.0, 2.0)
    first, last = float(values.min()), float(values.max())
    if last - first < _MIN_SPAN:
        middle = (first + last) / 2
        first, last = middle - _MIN_SPAN / 2, middle + _MIN_SPAN / 2
    pad = max((last - first) * 0.03, 5 / 60)
    low, high = first - pad, last + pad
    if float(values.min()) >= 0:
        low = max(low, 0.0)
    if float(values.max()) <= 24:
        high = min(high, 24.0)
    for step in _STEPS:
        start = math.floor(low / step) * step
        end = math.ceil(high / step) * step
        if (end - start) / step <= _MAX_TICKS:
            break
    return TimeAxis(start, end, step)


def clock_label(hours: float) -> str:
    """``HH:MM`` of a point on the axis; a day before or after the study day is marked (``00:30 +1d``)."""
    minutes = round(hours * 60)
    days, rest = divmod(minutes, 24 * 60)
    text = f"{rest // 60:02d}:{rest % 60:02d}"
    return text if days == 0 else f"{text} {days:+d}d"


def utilization_figure(days: pd.DataFrame, encounter_table: pd.DataFrame, gaps: pd.DataFrame) -> Figure:
    """One lane per scanner-day: encounters as bars, idle gaps shaded, utilization in the label."""
    lanes = days.sort_values(["day", "scanner"]).reset_index(drop=True)
    height = max(3.0, 0.55 * len(lanes) + 1.8)
    fig, ax = plt.subplots(figsize=(12, height))
    origin = _common_origin(encounter_table)
    labels = []
    for index, (_, row) in enumerate(lanes.iterrows()):
        mine = encounter_table[
            (encounter_table["scanner"] == row["scanner"]) & (encounter_table["day"] == row["day"])
        ]
        holes = gaps[(gaps["scanner"] == row["scanner"]) & (gaps["day"] == row["day"])]
        day0 = origin if origin is not None else pd.Timestamp(str(row["day"]))
        for _, gap in holes.iterrows():
            ax.barh(
                index,
                (gap["end"] - gap["start"]) / pd.Timedelta(hours=1),
                left=(gap["start"] - day0) / pd.Timedelta(hours=1),
                height=0.6,
                color=_IDLE,
                alpha=0.6,
            )
        for _, enc in mine.iterrows():
            width = max(
                (enc["end"] - enc["start"]) / pd.Timedelta(hours=1), 1 / 60
            )  # at least a minute: visible
            ax.barh(
                index,
                width,
                left=(enc["start"] - day0) / pd.Timedelta(hours=1),
                height=0.6,
                color=_BUSY,
                edgecolor="white",
                linewidth=0.5,
            )
        pct = row["utilization_pct"]
        shown = "n/a" if pd.isna(pct) else f"{pct:.0f}%"
        labels.append(f"{row['scanner']} {row['day']} ({shown})")
    ax.set_yticks(range(len(lanes)), labels=labels, fontsize=8)
    ax.invert_yaxis()
    axis = _encounter_axis(encounter_table, origin)
    ax.set_xlim(axis.start, axis.end)
    ax.set_xticks(axis.ticks, labels=[clock_label(t) for t in axis.ticks], fontsize=8)
    several_days = lanes["day"].nunique() > 1
    ax.set_xlabel(
        f"time (+1d: the day after {origin:%Y-%m-%d})"
        if origin is not None and several_days
        else "time of day on the study day"
    )
    ax.set_ylabel("scanner, day (utilization)")
    ax.set_title("Scanner utilization: encounters and idle gaps")
    ax.grid(axis="x", linestyle=":", alpha=0.6)
    ax.legend(
        handles=[Patch(color=_BUSY, label="encounter"), Patch(color=_IDLE, alpha=0.6, label="idle gap")],
        loc="upper left",
        bbox_to_anchor=(1.005, 1.0),  # outside the lanes: with the axis fitted, bars reach its edges
        borderaxespad=0,
        fontsize=8,
    )
    fig.tight_layout()
    return fig


def _common_origin(encounter_table: pd.DataFrame) -> pd.Timestamp | None:
    """Midnight of the first study day when all the activity fits in 24 hours, else None.

    Then every lane shares one time line (an evening and the night after it
    read as one stretch, the next day marked +1d); otherwise, as for a month,
    each lane shows the time of day on its own study day.
    """
    if encounter_table.empty:
        return None
    if encounter_table["end"].max() - encounter_table["start"].min() > pd.Timedelta(hours=24):
        return None
    return pd.Timestamp(str(encounter_table["day"].astype(str).min()))


def _encounter_axis(encounter_table: pd.DataFrame, origin: pd.Timestamp | None) -> TimeAxis:
    if encounter_table.empty:
        return time_axis(pd.Series(dtype=float), pd.Series(dtype=float))
    if origin is not None:
        day0: pd.Series | pd.Timestamp = origin
    else:
        day0 = pd.to_datetime(encounter_table["day"].astype(str), format="%Y%m%d")
    hour = pd.Timedelta(hours=1)
    return time_axis((encounter_table["start"] - day0) / hour, (encounter_table["end"] - day0) / hour)


def skew_figure(scanners: pd.DataFrame, threshold_hours: float) -> Figure:
    """One bar per scanner: median skew in hours, min-max whiskers, the threshold, flagged ones in red."""
    rows = scanners.sort_values("median_hours").reset_index(drop=True)
    height = max(2.5, 0.45 * len(rows) + 1.5)
    fig, ax = plt.subplots(figsize=(10, height))
    labels = [f"{r.scanner} ({r.manufacturer} {r.model}, n={r.studies})" for r in rows.itertuples()]
    colours = [_BAD if flagged else _OK for flagged in rows["misconfigured"]]
    low = (rows["median_hours"] - rows["min_hours"]).clip(lower=0)
    high = (rows["max_hours"] - rows["median_hours"]).clip(lower=0)
    ax.barh(range(len(rows)), rows["median_hours"], color=colours, xerr=[low, high], capsize=3, alpha=0.85)
    for sign in (-1, 1):
        ax.axvline(sign * threshold_hours, color="grey", linestyle="--", linewidth=1)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), labels=labels, fontsize=8)
    ax.set_xlabel("clock skew: arrival - acquisition (hours; whiskers: min to max)")
    ax.set_ylabel("scanner (DeviceSerialNumber)")
    ax.set_title(f"Scanner clock skew (median; flagged beyond ±{threshold_hours:g} h)")
    ax.legend(
        handles=[Patch(color=_BAD, label="misconfigured"), Patch(color=_OK, label="healthy")],
        loc="lower right",
        fontsize=8,
    )
    ax.grid(axis="x", linestyle=":", alpha=0.6)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: Path, title: str, table: pd.DataFrame | None = None) -> None:
    """Write *fig* as PNG, or as a self-contained HTML page (figure plus table) for ``.html``."""
    suffix = path.suffix.lower()
    if suffix not in (".png", ".html", ".htm"):
        raise InputError(f"--plot {path}: the file must end in .png or .html")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Rendered in memory, then written atomically: an interrupted run leaves no half a file.
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120)
        if suffix == ".png":
            write_bytes_atomic(path, buffer.getvalue())
            return
        image = base64.b64encode(buffer.getvalue()).decode("ascii")
        rows = table.to_html(index=False, border=0) if table is not None else ""
        with atomic_write(path) as handle:
            handle.write(
                "<!doctype html><html><head><meta charset='utf-8'>"
                f"<title>{html.escape(title)}</title>"
                "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
                "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}</style></head><body>"
                f"<h1>{html.escape(title)}</h1><img alt='{html.escape(title)}' "
                f"src='data:image/png;base64,{image}'>{rows}</body></html>"
            )
    finally:
        plt.close(fig)
