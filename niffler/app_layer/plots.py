"""Plots of the reports: a per-scanner day timeline for utilization, a per-scanner chart for clock skew.

matplotlib (the Agg backend: no display needed) writes PNG; for ``.html``
the same figure is embedded as a base64 PNG in a small self-contained page
with the report's table, so it opens anywhere without a server or scripts.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from niffler.common.errors import InputError

__all__ = ["save_figure", "skew_figure", "utilization_figure"]

_BUSY = "#1f77b4"
_IDLE = "#f2c14e"
_BAD = "#d62728"
_OK = "#2ca02c"


def utilization_figure(days: pd.DataFrame, encounter_table: pd.DataFrame, gaps: pd.DataFrame) -> Figure:
    """One lane per scanner-day: encounters as bars, idle gaps shaded, utilization in the label."""
    lanes = days.sort_values(["day", "scanner"]).reset_index(drop=True)
    height = max(3.0, 0.55 * len(lanes) + 1.8)
    fig, ax = plt.subplots(figsize=(12, height))
    labels = []
    for index, (_, row) in enumerate(lanes.iterrows()):
        mine = encounter_table[
            (encounter_table["scanner"] == row["scanner"]) & (encounter_table["day"] == row["day"])
        ]
        holes = gaps[(gaps["scanner"] == row["scanner"]) & (gaps["day"] == row["day"])]
        day0 = pd.Timestamp(str(row["day"]))
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
    ax.set_xlim(0, max(24.0, _latest_hour(encounter_table)))
    ax.set_xticks(range(0, int(ax.get_xlim()[1]) + 1, 2))
    ax.set_xlabel("time of day (hours since midnight of the study day)")
    ax.set_ylabel("scanner, day (utilization)")
    ax.set_title("Scanner utilization: encounters and idle gaps")
    ax.grid(axis="x", linestyle=":", alpha=0.6)
    ax.legend(
        handles=[Patch(color=_BUSY, label="encounter"), Patch(color=_IDLE, alpha=0.6, label="idle gap")],
        loc="upper right",
        fontsize=8,
    )
    fig.tight_layout()
    return fig


def _latest_hour(encounter_table: pd.DataFrame) -> float:
    if encounter_table.empty:
        return 24.0
    day0 = pd.to_datetime(encounter_table["day"].astype(str), format="%Y%m%d")
    return float(((encounter_table["end"] - day0) / pd.Timedelta(hours=1)).max()) + 0.5


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
        if suffix == ".png":
            fig.savefig(path, dpi=120)
            return
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120)
        image = base64.b64encode(buffer.getvalue()).decode("ascii")
        rows = table.to_html(index=False, border=0) if table is not None else ""
        path.write_text(
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
            "td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><img alt='{html.escape(title)}' "
            f"src='data:image/png;base64,{image}'>{rows}</body></html>",
            encoding="utf-8",
        )
    finally:
        plt.close(fig)
