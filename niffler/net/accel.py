"""The one seam between Niffler's networking and its pynetdicom accelerator.

The accelerator (:mod:`niffler.net._pynetdicom30`) makes receiving and
retrieving fast on pynetdicom 3.0 by replacing parts of its machinery:
waiting loops instead of 1 ms polls, C-STORE requests served from their
bytes, C-MOVE/C-GET responses read without a status Dataset each, shared
presentation contexts, a 50 ms server stop (see that module). It depends on
pynetdicom internals, so it is optional:

- it is imported here, once, inside a guard: a missing or renamed internal,
  or an exception of any kind, means it is off;
- it is off when the installed pynetdicom is not a version it was verified
  on (:data:`niffler.net._pynetdicom30.SUPPORTED`);
- ``NIFFLER_NET_ACCEL=0`` switches it off (CI runs the network tests both ways).

Every function below has a public-API path that runs when it is off, with
the same results, only slower. :func:`describe` says which path runs; the
Storage SCP and niffler-cold log it once at start (INFO).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pynetdicom
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context

from niffler.net.messages import RetrieveResponse, StoreHandler

if TYPE_CHECKING:  # annotations only: pynetdicom's own classes, named by its one seam
    from niffler.net._pynetdicom30 import Association, PresentationContext

__all__ = [
    "ENABLED",
    "ENV",
    "accepted_transfer_syntax",
    "describe",
    "new_ae",
    "on_accepted",
    "send_retrieve",
    "set_store_handler",
    "shared_context",
    "start_server",
    "withhold_identifiers",
]

log = logging.getLogger(__name__)

#: Environment switch: ``0``, ``off``, ``no`` or ``false`` turns the accelerator off.
ENV = "NIFFLER_NET_ACCEL"


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get(ENV, "").strip().lower() in ("0", "off", "no", "false"):
        return None, f"off (${ENV})"
    try:
        module = importlib.import_module("niffler.net._pynetdicom30")
    except Exception as exc:  # any failure of an optional speed-up means: use the public API
        return None, f"off: it does not load on pynetdicom {pynetdicom.__version__} ({type(exc).__name__})"
    if not module.SUPPORTED:
        return None, f"off: pynetdicom {pynetdicom.__version__} is not a version it was verified on"
    return module, f"on (pynetdicom {pynetdicom.__version__})"


_FAST, _STATE = _load()
#: Whether the accelerator runs in this process.
ENABLED = _FAST is not None


def describe() -> str:
    """One phrase for the start-up log: whether the accelerator runs, and why not."""
    return f"pynetdicom accelerator {_STATE}"


def withhold_identifiers() -> bool:
    """Make pynetdicom's traffic log (``-vv``) leave out query identifiers; False if it cannot.

    Its switches are internals, so they live with the accelerator; they are
    set even when the accelerator is switched off, as long as its module
    loads. The caller hides pynetdicom's traffic when this returns False.
    """
    module = _FAST
    if module is None:
        try:
            module = importlib.import_module("niffler.net._pynetdicom30")
        except Exception:
            return False
    module.withhold_identifiers()
    return True


def new_ae(ae_title: str) -> AE:
    """Return the AE every Niffler association is requested or accepted with."""
    if _FAST is not None:
        return _FAST.NifflerAE(ae_title=ae_title)  # type: ignore[no-any-return]
    return AE(ae_title=ae_title)


def shared_context(abstract_syntax: str, transfer_syntaxes: list[str]) -> PresentationContext:
    """Return a presentation context of the Storage SCP's supported set (syntaxes in this order)."""
    if _FAST is None:
        return build_context(abstract_syntax, transfer_syntaxes)
    context = _FAST.SharedContext()
    context.abstract_syntax = abstract_syntax
    for ts in transfer_syntaxes:
        context.add_transfer_syntax(ts)
    return context  # type: ignore[no-any-return]


def on_accepted(assoc: Association, store: StoreHandler | None) -> bool:
    """Prepare an accepted association (EVT_CONN_OPEN); return whether *store* will serve its C-STOREs.

    When it returns False, its C-STOREs reach the EVT_C_STORE handler.
    """
    if _FAST is None:
        return False
    return bool(_FAST.on_accepted(assoc, store))


def set_store_handler(assoc: Association, handler: StoreHandler | None) -> bool:
    """Serve *assoc*'s C-STORE requests with *handler*; False means EVT_C_STORE handlers serve them."""
    if _FAST is None:
        return False
    return bool(_FAST.set_store_handler(assoc, handler))


def accepted_transfer_syntax(assoc: Association, context_id: int) -> str:
    """The transfer syntax accepted for presentation context *context_id* of *assoc*."""
    if _FAST is not None:
        return str(_FAST.accepted_transfer_syntax(assoc, context_id))
    for context in assoc.accepted_contexts:
        if context.context_id == context_id:
            return str(context.transfer_syntax[0])
    raise KeyError(context_id)


def start_server(
    ae: AE,
    address: tuple[str, int],
    contexts: list[PresentationContext],
    evt_handlers: list[Any],
    poll: float,
) -> Any:
    """Start listening in background threads; return the server (``shutdown()`` stops it)."""
    if _FAST is not None:
        return _FAST.start_server(ae, address, contexts, evt_handlers, poll)
    return ae.start_server(address, block=False, contexts=contexts, evt_handlers=evt_handlers)


def send_retrieve(
    assoc: Association, identifier: Dataset, query_model: str, move_destination: str | None = None
) -> Iterator[RetrieveResponse]:
    """Send a C-MOVE (to *move_destination*) or, without one, a C-GET; yield each response's counts.

    A response with status None means none came (abort, timeout, an invalid message).
    """
    if _FAST is not None:
        yield from _FAST.send_retrieve(assoc, identifier, query_model, move_destination)
        return
    responses = (
        assoc.send_c_move(identifier, move_destination, query_model)
        if move_destination is not None
        else assoc.send_c_get(identifier, query_model)
    )
    for status, _ in responses:
        if not status or "Status" not in status:
            yield RetrieveResponse(None)
            return
        yield RetrieveResponse(
            int(status.Status),
            _count(status, "NumberOfRemainingSuboperations"),
            _count(status, "NumberOfCompletedSuboperations"),
            _count(status, "NumberOfFailedSuboperations"),
            _count(status, "NumberOfWarningSuboperations"),
        )


def _count(status: Dataset, keyword: str) -> int | None:
    with contextlib.suppress(TypeError, ValueError):
        value = status.get(keyword)
        return None if value is None or value == "" else int(value)
    return None
