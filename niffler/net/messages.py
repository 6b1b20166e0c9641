"""The records the network layers hand each other (no pynetdicom internals here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["PENDING", "RetrieveResponse", "StoreHandler", "StoreRequest"]

#: The Pending statuses of C-FIND, C-MOVE and C-GET responses (PS3.4 C.4).
PENDING = (0xFF00, 0xFF01)


@dataclass(slots=True)
class StoreRequest:
    """A C-STORE request read straight from its PDVs, served without a pynetdicom primitive.

    Associations with a store handler (accelerated only) queue these instead
    of C_STORE primitives; *dataset* is the encoded dataset exactly as received.
    """

    context_id: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    dataset: bytes | memoryview


#: Serves a StoreRequest on an association (a pynetdicom Association); returns the status. Never raises.
StoreHandler = Callable[[Any, StoreRequest], int]


@dataclass(frozen=True, slots=True)
class RetrieveResponse:
    """One C-MOVE / C-GET response; *status* None when none came (abort, timeout, a bad message)."""

    status: int | None
    remaining: int | None = None
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None
