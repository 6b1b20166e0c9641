"""Regenerate niffler/common/data/ps3.15-e1-1-<edition>.csv from dicom-anonymizer.

The action table of DICOM PS3.15 Annex E Table E.1-1 (Basic Application Level
Confidentiality Profile) is carried as a data file so the engine does not
depend on another package's module layout at run time. Its source is the
BSD-3 package ``dicom-anonymizer`` (2.1.0), module
``dicomanonymizer.dicom_anonymization_databases.dicomfields_<edition>``, whose
lists name each tag's action (D, Z, X, U and their combinations).

    .venv/bin/pip install dicom-anonymizer==2.1.0
    .venv/bin/python scripts/gen_deid_table.py 2026c

tests/unit/test_deid_table.py checks the shipped file against the package.
"""

from __future__ import annotations

import csv
import importlib
import io
import sys
from pathlib import Path

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


def tag_text(entry: tuple[int, ...]) -> str:
    """Render (group, element[, group mask, element mask]) as '(gggg,eeee)' with x for masked digits."""
    group, element = entry[0], entry[1]
    gmask, emask = (entry[2], entry[3]) if len(entry) == 4 else (0xFFFF, 0xFFFF)

    def digits(value: int, mask: int) -> str:
        return "".join(
            f"{(value >> shift) & 0xF:X}" if (mask >> shift) & 0xF else "x" for shift in (12, 8, 4, 0)
        )

    return f"({digits(group, gmask)},{digits(element, emask)})"


def table_rows(edition: str) -> list[tuple[str, str]]:
    module = importlib.import_module(f"dicomanonymizer.dicom_anonymization_databases.dicomfields_{edition}")
    rows: dict[str, str] = {}
    for name, action in LISTS.items():
        for entry in getattr(module, name):
            key = tag_text(entry)
            if key in rows and rows[key] != action:
                raise SystemExit(f"{key} is listed as both {rows[key]} and {action}")
            rows[key] = action
    return sorted(rows.items())


def render(edition: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["tag", "action"])
    writer.writerows(table_rows(edition))
    return out.getvalue()


def main(argv: list[str]) -> int:
    edition = argv[1] if len(argv) > 1 else "2026c"
    target = Path(__file__).resolve().parent.parent / "niffler/common/data" / f"ps3.15-e1-1-{edition}.csv"
    target.write_text(render(edition), encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
