"""AE titles and addresses, and associations that always release or abort and say why they failed."""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pynetdicom import AE, evt

from niffler.common.errors import AssociationError, ConfigError

if TYPE_CHECKING:  # annotations only: pynetdicom's own classes, named by its one seam
    from niffler.net._pynetdicom30 import Association

__all__ = ["AEAddress", "associate", "no_delay", "open_association", "validate_ae_title"]

# PS3.5 8.1: AE titles are 16 characters of the default repertoire, no
# backslash or control characters; leading and trailing spaces are not significant.
_AE_TITLE = re.compile(r"[\x20-\x5B\x5D-\x7E]{1,16}")


def validate_ae_title(title: str, what: str = "AE title") -> str:
    """Return *title* stripped, or raise ConfigError explaining what is wrong."""
    stripped = title.strip()
    if not stripped:
        raise ConfigError(f"{what} is empty")
    if len(stripped) > 16:
        raise ConfigError(f"{what} {stripped!r} is longer than 16 characters")
    if not _AE_TITLE.fullmatch(stripped):
        raise ConfigError(f"{what} {stripped!r} contains a backslash or control character")
    return stripped


@dataclass(frozen=True)
class AEAddress:
    """A DICOM application entity: title, host and port."""

    title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, what: str = "AE address", default_host: str = "127.0.0.1") -> AEAddress:
        """Return the address in ``AET@host:port`` or ``AET:port`` form.

        Upstream writes ``SrcAet`` as ``AET@host:port`` and ``QueryAet`` as
        ``AET:port`` (the port Niffler listens on); the latter gets *default_host*.
        """
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{what} is empty; expected AET@host:port or AET:port")
        title, sep, rest = text.strip().rpartition("@")
        if not sep:
            title, sep, port_text = text.strip().rpartition(":")
            host = default_host
            if not sep:
                raise ConfigError(f"{what} {text!r} has no port; expected AET@host:port or AET:port")
        else:
            host, sep, port_text = rest.rpartition(":")
            if not sep or not host:
                raise ConfigError(f"{what} {text!r}: expected AET@host:port")
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ConfigError(f"{what} {text!r}: port must be a number from 1 to 65535")
        return cls(validate_ae_title(title, f"{what} title"), host.strip("[]"), int(port_text))

    def __str__(self) -> str:
        return f"{self.title}@{self.host}:{self.port}"


def no_delay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: turn off Nagle's algorithm on the association's socket.

    pynetdicom sends a DIMSE message as several PDUs (command, then dataset),
    each its own ``send``; with Nagle on, the second waits for the peer's
    delayed ACK of the first, about 40 ms per request or response. DCMTK
    offers the same switch as ``TCP_NODELAY=1``.
    """
    transport = getattr(event.assoc.dul, "socket", None)
    sock = getattr(transport, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)




def _rejection_reason(assoc: Association) -> str:
    primitive = getattr(assoc.acceptor, "primitive", None)
    reason = getattr(primitive, "reason_str", "") if primitive is not None else ""
    return f": {reason}" if reason else ""


def open_association(
    ae: AE,
    peer: AEAddress,
    *,
    ext_neg: Sequence[Any] | None = None,
    evt_handlers: Sequence[Any] | None = None,
) -> Association:
    """Return an established association to *peer*, which the caller must release or abort.

    Raises AssociationError saying why when it cannot be established: the
    peer's rejection reason (e.g. "Called AE title not recognised"), nothing
    listening, no answer within the ACSE timeout, or an abort right after
    connecting (what a PACS does to a calling AE title it does not know).
    """
    started = time.monotonic()
    assoc = ae.associate(
        peer.host,
        peer.port,
        ae_title=peer.title,
        ext_neg=list(ext_neg) if ext_neg else None,
        evt_handlers=[(evt.EVT_CONN_OPEN, no_delay), *(evt_handlers or ())],
    )
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        raise AssociationError(
            f"{peer} rejected the association{_rejection_reason(assoc)} "
            f"(is its AE title {peer.title!r} right, and is our AE title {ae.ae_title!r} known to it?)"
        )
    reachable = _tcp_reachable(peer, min(5.0, float(ae.acse_timeout or 5.0)))
    if reachable is not None:
        reason = f"could not be reached ({reachable})"
    elif time.monotonic() - started >= float(ae.acse_timeout or 30.0) * 0.9:
        reason = f"did not answer the association request within {ae.acse_timeout} s"
    else:
        reason = f"aborted the association (does it know our AE title {ae.ae_title!r}?)"
    raise AssociationError(f"{peer} {reason}")


def _tcp_reachable(peer: AEAddress, timeout: float) -> str | None:
    """Return why a TCP connection to *peer* fails, or None when it succeeds."""
    try:
        with socket.create_connection((peer.host, peer.port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return "connection refused: nothing listens on that port"
    except TimeoutError:
        return f"no TCP answer within {timeout:g} s: wrong host, or a firewall"
    except OSError as exc:
        return exc.strerror or str(exc)


@contextlib.contextmanager
def associate(
    ae: AE,
    peer: AEAddress,
    *,
    ext_neg: Sequence[Any] | None = None,
    evt_handlers: Sequence[Any] | None = None,
) -> Iterator[Association]:
    """Yield an established association to *peer*; always release or abort it.

    Raises AssociationError as :func:`open_association` does.
    """
    assoc = open_association(ae, peer, ext_neg=ext_neg, evt_handlers=evt_handlers)
    try:
        yield assoc
    except BaseException:
        if assoc.is_established:
            assoc.abort()
        raise
    else:
        if assoc.is_established:
            assoc.release()

