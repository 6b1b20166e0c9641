"""The utilization timeline's time axis fits the day's activity instead of always spanning 0 to 24 h."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from niffler.app_layer.plots import TimeAxis, clock_label, time_axis, utilization_figure
from niffler.app_layer.utilization import encounters, idle_gaps, scanner_days


def hours(*values: float) -> pd.Series:
    return pd.Series(values, dtype=float)


def study(
    scanner: str, patient: str, uid: str, start: str, end: str, day: str = "20200106"
) -> dict[str, object]:
    return {
        "scanner": scanner,
        "day": day,
        "patient": patient,
        "study": uid,
        "description": "",
        "modality": "CT",
        "start": pd.Timestamp(start),
        "end": pd.Timestamp(end),
        "series": 2,
    }


def test_a_morning_fills_the_axis() -> None:
    axis = time_axis(hours(8.0, 9.0), hours(8.5, 10.0))
    assert axis == TimeAxis(7.75, 10.25, 0.25)
    assert [clock_label(t) for t in axis.ticks][:3] == ["07:45", "08:00", "08:15"]
    assert clock_label(axis.ticks[-1]) == "10:15"


def test_no_activity_is_the_whole_day() -> None:
    assert time_axis(hours(), hours()) == TimeAxis(0.0, 24.0, 2.0)


def test_one_short_encounter_gets_an_hour_of_context() -> None:
    axis = time_axis(hours(14.0), hours(14 + 5 / 60))
    assert axis.end - axis.start >= 1.0
    assert axis.start < 14.0 and axis.end > 14 + 5 / 60


@pytest.mark.parametrize(
    ("first", "last", "step"),
    [(8.0, 10.0, 0.25), (8.0, 12.5, 0.5), (7.0, 17.0, 1.0), (6.0, 22.0, 2.0), (0.5, 23.5, 2.0)],
)
def test_step_keeps_ticks_readable(first: float, last: float, step: float) -> None:
    axis = time_axis(hours(first), hours(last))
    assert axis.step == step
    assert len(axis.ticks) - 1 <= 12
    assert axis.start <= first and axis.end >= last
    assert axis.start >= 0 and axis.end <= 24
    assert all(t / axis.step == round(t / axis.step) for t in axis.ticks)  # round clock times


def test_past_midnight_extends_the_axis_and_is_labelled() -> None:
    axis = time_axis(hours(23.0), hours(24.5))
    assert axis.end >= 24.5
    assert clock_label(24.5) == "00:30 +1d"
    assert clock_label(-0.5) == "23:30 -1d"
    assert clock_label(13.75) == "13:45"


def test_utilization_figure_uses_the_fitted_axis() -> None:
    studies = pd.DataFrame(
        [
            study("CT1", "P1", "S1", "2020-01-06 08:00", "2020-01-06 08:20"),
            study("CT1", "P2", "S2", "2020-01-06 09:00", "2020-01-06 09:40"),
            study("MR1", "P3", "S3", "2020-01-06 08:30", "2020-01-06 10:00"),
        ]
    )
    table = encounters(studies)
    fig = utilization_figure(scanner_days(table), table, idle_gaps(table))
    try:
        ax = fig.axes[0]
        low, high = ax.get_xlim()
        assert 7.5 <= low < 8.0 and 10.0 < high <= 10.5
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels[0] == "07:45" and "09:00" in labels and labels[-1] == "10:15"
        # Every encounter bar lies inside the axis.
        bars = [p for p in ax.patches if p.get_height() == pytest.approx(0.6)]
        assert bars and all(low <= p.get_x() and p.get_x() + p.get_width() <= high for p in bars)
    finally:
        plt.close(fig)


def test_utilization_figure_with_no_encounters_shows_the_whole_day() -> None:
    empty = encounters(pd.DataFrame(columns=list(study("A", "P", "S", "2020-01-06", "2020-01-06"))))
    fig = utilization_figure(scanner_days(empty), empty, idle_gaps(empty))
    try:
        assert fig.axes[0].get_xlim() == (0.0, 24.0)
    finally:
        plt.close(fig)


def test_an_evening_and_the_night_after_share_one_time_line() -> None:
    studies = pd.DataFrame(
        [
            study("CT1", "P1", "S1", "2020-01-06 22:30", "2020-01-06 23:10", day="20200106"),
            study("CT1", "P2", "S2", "2020-01-07 00:10", "2020-01-07 00:40", day="20200107"),
        ]
    )
    table = encounters(studies)
    fig = utilization_figure(scanner_days(table), table, idle_gaps(table))
    try:
        ax = fig.axes[0]
        low, high = ax.get_xlim()
        assert 22.0 <= low < 22.5 and 24.67 < high <= 25.5  # not 0 to 24 h: 22:30 to 00:40 the next day
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert "23:00" in labels and "00:00 +1d" in labels
        assert "2020-01-06" in ax.get_xlabel()
    finally:
        plt.close(fig)


def test_a_month_keeps_each_lane_on_its_own_day() -> None:
    studies = pd.DataFrame(
        [
            study("CT1", "P1", "S1", "2020-01-06 08:00", "2020-01-06 09:00", day="20200106"),
            study("CT1", "P2", "S2", "2020-01-20 09:00", "2020-01-20 10:30", day="20200120"),
        ]
    )
    table = encounters(studies)
    fig = utilization_figure(scanner_days(table), table, idle_gaps(table))
    try:
        low, high = fig.axes[0].get_xlim()
        assert 7.5 <= low < 8.0 and 10.5 < high <= 11.0
        assert fig.axes[0].get_xlabel() == "time of day on the study day"
    finally:
        plt.close(fig)
