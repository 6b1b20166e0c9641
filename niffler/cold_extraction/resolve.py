"""C-FIND: a planned row -> the studies or series it retrieves.

A study-level row is one STUDY-level C-FIND; each distinct StudyInstanceUID
it matches is a target. A SERIES-level row (it names a key of
:data:`~niffler.cold_extraction.plan.SERIES_KEYS`) is resolved in Study Root
terms, where a SERIES-level C-FIND names its study:

- when the row's only study key is StudyInstanceUID, or it has none, one
  SERIES-level C-FIND with that StudyInstanceUID (empty: any study, which
  Orthanc, DCMTK's dcmqrscp and pynetdicom's qrscp all answer);
- otherwise a STUDY-level C-FIND with the row's study keys first, then a
  SERIES-level C-FIND within each study it matched.

Each distinct SeriesInstanceUID is a target. Every C-FIND goes through the
run's retries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from niffler.cold_extraction.plan import Query
from niffler.cold_extraction.retrieve import SERIES_RESOLVE_KEYS, Session, distinct_matches
from niffler.cold_extraction.verdict import Target

__all__ = ["Resolved", "resolve"]

T = TypeVar("T")
#: Runs one C-FIND with the run's retries.
Attempt = Callable[[Callable[[], T]], T]


@dataclass
class Resolved:
    """A row C-FIND resolved to its targets (studies, or series of a SERIES-level row)."""

    query: Query
    targets: list[Target]
    #: STUDY-level matches (with the run's return keys): for cfind-output.csv in the query-only modes.
    matches: list[dict[str, str]] = field(default_factory=list)

    @property
    def level(self) -> str:
        return "SERIES" if self.query.series_level else "STUDY"

    @property
    def studies(self) -> int:
        """How many distinct studies the row's targets are (in)."""
        return len({t.study_uid or t.uid for t in self.targets})

    @property
    def series(self) -> int | None:
        """How many series a SERIES-level row resolved to; None for a study-level row."""
        return len(self.targets) if self.query.series_level else None


def resolve(
    session: Session,
    query: Query,
    study_keys: Sequence[str],
    attempt: Attempt[list[dict[str, str]]],
    *,
    describe_studies: bool = False,
) -> Resolved:
    """C-FIND *query*'s targets; *study_keys* are the STUDY-level return keys (the mode's).

    With *describe_studies* (the query-only modes), a SERIES-level row also
    gets the STUDY-level matches of the studies its series are in.
    """
    if not query.series_level:
        studies = attempt(partial(session.find_distinct, query.identifiers, study_keys, "STUDY"))
        return Resolved(query, [Target.from_match("STUDY", m) for m in studies], studies)

    study_ids = query.study_identifiers
    series_ids = query.series_identifiers
    found: list[dict[str, str]] = []
    study_matches: list[dict[str, str]] | None = None
    if set(study_ids) <= {"StudyInstanceUID"}:
        given = study_ids.get("StudyInstanceUID", "")
        identifiers = {"StudyInstanceUID": given, **series_ids}
        for match in attempt(partial(session.find_distinct, identifiers, SERIES_RESOLVE_KEYS, "SERIES")):
            found.append({**match, "StudyInstanceUID": match.get("StudyInstanceUID") or given})
    else:
        study_matches = attempt(partial(session.find_distinct, study_ids, study_keys, "STUDY"))
        for study in study_matches:
            uid = study.get("StudyInstanceUID", "")
            if not uid:  # a study the PACS does not name can not be narrowed to series
                found.append({"StudyInstanceUID": ""})
                continue
            within = {"StudyInstanceUID": uid, **series_ids}
            for match in attempt(partial(session.find_distinct, within, SERIES_RESOLVE_KEYS, "SERIES")):
                found.append({**match, "StudyInstanceUID": match.get("StudyInstanceUID") or uid})
    targets = [
        Target.from_match("SERIES", m) if m.get("StudyInstanceUID") else Target("STUDY", "", "")
        for m in distinct_matches(found, "SeriesInstanceUID")
    ]
    if not describe_studies:
        return Resolved(query, targets)
    return Resolved(query, targets, _studies_of(session, targets, study_matches, study_keys, attempt))


def _studies_of(
    session: Session,
    targets: list[Target],
    studies: list[dict[str, str]] | None,
    study_keys: Sequence[str],
    attempt: Attempt[list[dict[str, str]]],
) -> list[dict[str, str]]:
    """The STUDY-level matches of the studies holding *targets* (C-FINDs them when not found yet)."""
    wanted = list(dict.fromkeys(t.study_uid for t in targets if t.study_uid))
    if studies is not None:
        return [s for s in studies if s.get("StudyInstanceUID") in wanted]
    out: list[dict[str, str]] = []
    for uid in wanted:  # one by one: not every PACS matches a list of UIDs in a C-FIND (qrscp does not)
        out += attempt(partial(session.find_distinct, {"StudyInstanceUID": uid}, study_keys, "STUDY"))
    return out
