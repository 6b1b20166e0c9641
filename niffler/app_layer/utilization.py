"""Scanner utilization: studies -> encounters -> per scanner per day, as pure pandas functions.

The algorithm of upstream's app layer (see UPSTREAM.md), with its flaws fixed:

1. A **study interval** runs from the study's earliest to its latest
   acquisition date-time (real date-times: an acquisition after midnight is
   on the next calendar day, and still belongs to the study's day).
2. **Encounters**: per scanner, day and patient, studies merge when they
   overlap or the gap between them is under the merge gap (20 minutes by
   default). An encounter sums studies and series and joins the study
   descriptions with ``::``.
3. **Utilization** of a scanner on a day = busy time / span, where the span
   runs from its first encounter's start to its last encounter's end and
   busy time is the *union* of its encounters (two patients' overlapping
   encounters count once, so it can never exceed 100%). The idle gaps are the
   holes in that union. With a span of zero (a single instant) utilization
   is undefined and left empty.

Every function takes and returns DataFrames; none touches the store.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

__all__ = [
    "STUDY_COLUMNS",
    "encounters",
    "idle_gaps",
    "parse_acquisition",
    "scanner_days",
    "union_blocks",
]

#: Columns a study table must have (one row per study interval).
STUDY_COLUMNS = ("scanner", "day", "patient", "study", "description", "modality", "start", "end", "series")


def parse_acquisition(stamps: Iterable[str | None]) -> pd.Series:
    """Parse ``YYYYMMDD`` + ``HHMMSS[.ffffff]`` (or ``HHMM``, ``HH``) strings into Timestamps; bad: NaT."""
    text = pd.Series(list(stamps), dtype="object").fillna("").astype(str).str.strip()
    date, clock = text.str[:8], text.str[8:]
    whole = clock.str.split(".", n=1).str[0].str.pad(6, side="right", fillchar="0")
    fraction = clock.str.split(".", n=1).str[1].fillna("").str[:6].str.pad(6, side="right", fillchar="0")
    digits = (date + whole + fraction).where(date.str.fullmatch(r"\d{8}") & whole.str.fullmatch(r"\d{6}"))
    parts = {
        name: pd.to_numeric(digits.str[a:b], errors="coerce")
        for name, (a, b) in {"year": (0, 4), "month": (4, 6), "day": (6, 8), "hour": (8, 10),
                             "minute": (10, 12), "second": (12, 14), "microsecond": (14, 20)}.items()
    }  # fmt: skip
    parsed = pd.to_datetime(pd.DataFrame(parts), errors="coerce")
    return pd.Series(parsed.to_numpy(), index=range(len(text)), name="acquisition")


def _idle_before(df: pd.DataFrame, keys: list[str]) -> pd.Series:
    """For rows sorted by *keys* then start: time from the latest end so far in the group to the row's start.

    NaT for each group's first row; negative when the row overlaps what came before.
    """
    reach = df.groupby(keys, sort=False)["end"].cummax()
    previous = reach.groupby([df[k] for k in keys], sort=False).shift(1)
    return df["start"] - previous


def encounters(studies: pd.DataFrame, gap_minutes: float = 20.0) -> pd.DataFrame:
    """Merge studies into encounters per (scanner, day, patient).

    Returns one row per encounter: scanner, day, patient, encounter (1-based
    within the scanner's day, in start order), start, end, duration_min,
    studies, series, descriptions (``::``-joined, in start order) and modality.
    """
    columns = [
        "scanner",
        "day",
        "patient",
        "encounter",
        "start",
        "end",
        "duration_min",
        "studies",
        "series",
        "descriptions",
        "modality",
    ]
    if studies.empty:
        return pd.DataFrame(columns=columns)
    df = studies.sort_values(["scanner", "day", "patient", "start", "end"], kind="stable").reset_index(
        drop=True
    )
    group = ["scanner", "day", "patient"]
    # A new encounter starts with the group's first study, or a study beginning at least
    # gap_minutes after the latest end so far.
    idle = _idle_before(df, group)
    new = idle.isna() | (idle >= pd.Timedelta(minutes=gap_minutes))
    df["_enc"] = new.cumsum()
    described = df["description"].fillna("").astype(str)
    df["_desc"] = described
    out = df.groupby("_enc", sort=False).agg(
        scanner=("scanner", "first"),
        day=("day", "first"),
        patient=("patient", "first"),
        start=("start", "min"),
        end=("end", "max"),
        studies=("study", "nunique"),
        series=("series", "sum"),
        descriptions=("_desc", lambda d: "::".join(x for x in d if x)),
        modality=("modality", lambda m: "/".join(sorted({str(x) for x in m if isinstance(x, str) and x}))),
    )
    out["duration_min"] = (out["end"] - out["start"]).dt.total_seconds() / 60.0
    out = out.sort_values(["scanner", "day", "start", "patient"], kind="stable").reset_index(drop=True)
    out["encounter"] = out.groupby(["scanner", "day"]).cumcount() + 1
    return out[columns]


def union_blocks(intervals: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Return the union of [start, end] intervals per *keys*: non-overlapping busy blocks in order."""
    if intervals.empty:
        return pd.DataFrame(columns=[*keys, "start", "end"])
    df = intervals.sort_values([*keys, "start", "end"], kind="stable").reset_index(drop=True)
    idle = _idle_before(df, keys)
    df["_block"] = (idle.isna() | (idle > pd.Timedelta(0))).cumsum()
    blocks = df.groupby("_block", sort=False).agg(
        **{k: (k, "first") for k in keys}, start=("start", "min"), end=("end", "max")
    )
    return blocks.reset_index(drop=True)


def idle_gaps(encounter_table: pd.DataFrame) -> pd.DataFrame:
    """Return the idle gaps of each scanner's day: scanner, day, start, end, minutes."""
    blocks = union_blocks(encounter_table, ["scanner", "day"])
    if blocks.empty:
        return pd.DataFrame(columns=["scanner", "day", "start", "end", "minutes"])
    blocks["gap_start"] = blocks.groupby(["scanner", "day"])["end"].shift(1)
    gaps = blocks.dropna(subset=["gap_start"])
    out = pd.DataFrame(
        {
            "scanner": gaps["scanner"],
            "day": gaps["day"],
            "start": gaps["gap_start"],
            "end": gaps["start"],
        }
    )
    out["minutes"] = (out["end"] - out["start"]).dt.total_seconds() / 60.0
    return out.reset_index(drop=True)


def scanner_days(encounter_table: pd.DataFrame) -> pd.DataFrame:
    """Return one row per scanner per day: utilization %, counts, busy and idle minutes, idle gaps."""
    columns = [
        "scanner",
        "day",
        "modality",
        "utilization_pct",
        "patients",
        "encounters",
        "studies",
        "series",
        "first_start",
        "last_end",
        "span_min",
        "busy_min",
        "idle_min",
        "idle_gaps",
    ]
    if encounter_table.empty:
        return pd.DataFrame(columns=columns)
    keys = ["scanner", "day"]
    grouped = encounter_table.groupby(keys, sort=True)
    out = grouped.agg(
        modality=("modality", lambda m: "/".join(sorted({p for x in m for p in str(x).split("/") if p}))),
        patients=("patient", "nunique"),
        encounters=("encounter", "count"),
        studies=("studies", "sum"),
        series=("series", "sum"),
        first_start=("start", "min"),
        last_end=("end", "max"),
    ).reset_index()
    blocks = union_blocks(encounter_table, keys)
    blocks["busy"] = (blocks["end"] - blocks["start"]).dt.total_seconds() / 60.0
    busy = blocks.groupby(keys)["busy"].sum().rename("busy_min").reset_index()
    out = out.merge(busy, on=keys, how="left")
    out["span_min"] = (out["last_end"] - out["first_start"]).dt.total_seconds() / 60.0
    out["idle_min"] = out["span_min"] - out["busy_min"]
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = np.where(out["span_min"] > 0, 100.0 * out["busy_min"] / out["span_min"], np.nan)
    out["utilization_pct"] = np.round(pct, 2)
    gaps = idle_gaps(encounter_table)
    text = (
        gaps.assign(t=gaps["start"].dt.strftime("%H:%M") + "-" + gaps["end"].dt.strftime("%H:%M"))
        .groupby(keys)["t"]
        .agg(";".join)
        .rename("idle_gaps")
        .reset_index()
        if not gaps.empty
        else pd.DataFrame(columns=[*keys, "idle_gaps"])
    )
    out = out.merge(text, on=keys, how="left")
    out["idle_gaps"] = out["idle_gaps"].fillna("")
    return out[columns]
