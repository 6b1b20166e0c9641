"""De-identification engine (PS3.15 Basic Profile with keyed pseudonyms).

Placeholder until the de-identification issue lands: it defines the entry
points' names so that callers can be written against them, and refuses to
run so that nothing is ever written un-de-identified by accident.
"""

from __future__ import annotations

from typing import Any

from niffler.common.errors import DeidError

__all__ = ["deidentify_to_dict"]


def deidentify_to_dict(dataset: Any) -> dict[str, Any]:
    """Return a de-identified flat dict of *dataset* (not implemented yet)."""
    raise DeidError("the de-identification engine is not implemented yet")
