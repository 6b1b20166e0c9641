"""The transfer verdict (pure): did a C-MOVE / C-GET bring a study or a series whole?

Success is counted, not assumed. A target (a study, or a series of a
SERIES-level row) is retrieved only when its C-MOVE/C-GET ends with status
0x0000, no sub-operation failed or warned, the distinct instances written for
it equal the PACS's completed sub-operations, and, when C-FIND reported
NumberOfStudyRelatedInstances (NumberOfSeriesRelatedInstances for a series),
that count too. When C-FIND reported no count (DCMTK's dcmqrscp never does),
the final status and the completed sub-operations are the whole verdict, and
a transfer that brought nothing is not a success.

A list transfer (several targets in one C-MOVE) is judged per target by
:func:`whole_in_list`. Messages name statuses and counts, never identifiers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from niffler.net.scu import describe_status

__all__ = [
    "COUNT_KEY",
    "LEVELS",
    "QUERY_OF",
    "UNIQUE_KEY",
    "Target",
    "Transfer",
    "list_groups",
    "verify_transfer",
    "whole_in_list",
]

#: The levels a row retrieves at (Study Root).
LEVELS = ("STUDY", "SERIES")
#: The unique key of each level.
UNIQUE_KEY = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID"}
#: The query that reports the counts a retrieval is checked against, by the retrieval's verb.
QUERY_OF = {"C-MOVE": "C-FIND", "C-GET": "C-FIND", "WADO-RS": "QIDO-RS"}
#: The C-FIND return key holding each level's instance count.
COUNT_KEY = {"STUDY": "NumberOfStudyRelatedInstances", "SERIES": "NumberOfSeriesRelatedInstances"}


@dataclass(frozen=True)
class Target:
    """What one C-MOVE / C-GET asks for and what is verified and marked done on its own.

    A study (*level* STUDY, *uid* its StudyInstanceUID) or a series (*level*
    SERIES, *uid* its SeriesInstanceUID, *study_uid* its study's), with the
    instance count C-FIND reported for it (None when the PACS said nothing).
    """

    level: str
    uid: str
    study_uid: str
    expected: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.level, self.uid)

    @classmethod
    def from_match(cls, level: str, match: Mapping[str, str], study_uid: str = "") -> Target:
        """The target a C-FIND match at *level* names; *study_uid* fills in a series match's missing study."""
        uid = (match.get(UNIQUE_KEY[level]) or "").strip()
        study = uid if level == "STUDY" else (match.get("StudyInstanceUID") or "").strip() or study_uid
        return cls(level, uid, study, count_or_none(match.get(COUNT_KEY[level])))


def count_or_none(text: str | None) -> int | None:
    """A C-FIND count as an int, or None when the PACS sent none (or nonsense)."""
    text = (text or "").strip()
    return int(text) if text.isdigit() else None


@dataclass(frozen=True)
class Transfer:
    """The end of one C-MOVE / C-GET: final status, sub-operation counts and what we stored.

    *received* is the distinct instances our receiver wrote for the targets
    asked for, or None when an external AE receives them (DestAet).
    """

    status: int
    completed: int | None
    failed: int | None
    warning: int | None
    received: int | None


def verify_transfer(
    transfer: Transfer,
    expected: int | None,
    verb: str = "C-MOVE",
    count_name: str = COUNT_KEY["STUDY"],
) -> str | None:
    """Return why *transfer* did not retrieve its whole target, or None when it did.

    *expected* is the count C-FIND reported (named *count_name* in the
    message), or None when it reported none.
    """
    if transfer.status != 0x0000:
        failed = f"; {transfer.failed} sub-operation(s) failed" if transfer.failed else ""
        return f"{verb} ended with status {describe_status(transfer.status)}{failed}"
    if transfer.failed or transfer.warning:
        return (
            f"{verb} reported Success but {transfer.failed or 0} failed and "
            f"{transfer.warning or 0} warning sub-operation(s)"
        )
    counted = transfer.received is not None and transfer.completed is not None
    if counted and transfer.received != transfer.completed:
        return (
            f"received {transfer.received} instance(s) but the PACS reported "
            f"{transfer.completed} completed sub-operation(s)"
        )
    got = transfer.received if transfer.received is not None else transfer.completed
    if expected is not None and got is not None and got != expected:
        query = QUERY_OF.get(verb, "C-FIND")
        return f"retrieved {got} instance(s) but {query} reported {count_name} {expected}"
    if expected is not None and got is None:
        return "the PACS reported no sub-operation counts, so the transfer can not be verified"
    if expected is None and got == 0:
        return f"{verb} reported Success but no instance arrived"
    return None


def whole_in_list(
    transfer: Transfer, targets: Sequence[Target], counts: Mapping[tuple[str, str], int], verb: str = "C-MOVE"
) -> tuple[list[Target], str | None]:
    """Judge a list transfer: the targets that arrived whole, and what went wrong with it as a whole.

    A target whose count C-FIND reported is whole when exactly that many of
    its distinct instances arrived, whatever happened to the others. One
    without a count is whole only when the transfer as a whole passed
    :func:`verify_transfer` and at least one of its instances arrived.
    """
    problem = verify_transfer(transfer, None, verb)
    whole = []
    for target in targets:
        count = counts.get(target.key, 0)
        if target.expected is not None:
            if count == target.expected:
                whole.append(target)
        elif problem is None and count > 0:
            whole.append(target)
    return whole, problem


def list_groups(targets: Iterable[Target], size: int) -> list[list[Target]]:
    """The targets that may share one C-MOVE / C-GET, *size* at a time (groups of one are left out).

    Studies go together; series go together only with series of the same
    study, since a SERIES-level identifier names one StudyInstanceUID.
    """
    by_kind: dict[tuple[str, str], list[Target]] = {}
    for target in targets:
        parent = target.study_uid if target.level == "SERIES" else ""
        by_kind.setdefault((target.level, parent), []).append(target)
    groups = []
    for members in by_kind.values():
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            if len(chunk) > 1:
                groups.append(chunk)
    return groups
