"""Transfer-syntax policy: what Niffler accepts as a receiver and proposes for C-GET.

Within one presentation context the acceptor picks one transfer syntax, and
every instance of that SOP class sent on the context must travel in it
(PS3.8 7.1.1.14). pynetdicom, as acceptor, picks the first syntax of *our*
list that the sender offers, so the order below is the policy:

1. lossless compression (JPEG 2000 lossless, JPEG Lossless, JPEG-LS
   lossless, RLE, HTJ2K lossless, ...): a compressed original keeps its
   bytes, nothing is decoded;
2. uncompressed (Explicit and Implicit VR Little Endian, Deflated, Big
   Endian), which every sender can produce from anything;
3. lossy syntaxes last, so one is chosen only when the sender offers
   nothing lossless for that context (which a sender does only for an
   original it holds lossy). The Storage SCP logs such a context once per
   association.

``TransferSyntaxPolicy`` selects a variant: ``lossless`` (the order above,
the default), ``uncompressed`` (uncompressed first: plain files for tools
without codecs, at the cost of the sender decoding), or ``never-lossy``
(lossy syntaxes are not accepted at all: a lossy original is then refused,
not stored).

For C-GET, Niffler is the requestor and the PACS picks: a PACS that cannot
transcode can only send an instance in a context whose chosen syntax is the
instance's own. So for the common image classes (CT, MR, CR, DX, MG, US, US
multi-frame, SC) :func:`get_contexts` proposes one context per syntax
family (8), and one context with the whole list for the dose and other SRs,
key objects, PDFs, presentation states and then pynetdicom's other
non-retired storage classes, as many as the 128-context limit leaves (62).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pynetdicom import ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, build_context

if TYPE_CHECKING:  # annotations only: pynetdicom's own classes, named by its one seam
    from niffler.net._pynetdicom30 import PresentationContext

__all__ = [
    "LOSSLESS_COMPRESSED",
    "LOSSY",
    "POLICIES",
    "UNCOMPRESSED",
    "acceptor_order",
    "get_contexts",
    "is_lossy",
]

UNCOMPRESSED = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
)
LOSSLESS_COMPRESSED = (
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, SV1
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.201",  # HTJ2K (Lossless Only)
    "1.2.840.10008.1.2.4.202",  # HTJ2K with RPCL (Lossless Only)
    "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 Multi-component (Lossless Only)
    "1.2.840.10008.1.2.4.110",  # JPEG XL Lossless
    "1.2.840.10008.1.2.8.1",  # Deflated Image Frame Compression
)
#: Every other syntax pynetdicom knows: lossy, video, or pixel data by reference (JPIP).
LOSSY = tuple(ts for ts in ALL_TRANSFER_SYNTAXES if ts not in UNCOMPRESSED + LOSSLESS_COMPRESSED)
POLICIES = ("lossless", "uncompressed", "never-lossy")

#: Syntax families proposed as separate C-GET contexts for the common image classes: the PACS
#: picks one syntax per context, so one instance in each family can travel as it is stored.
_FAMILIES = (
    ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"),
    ("1.2.840.10008.1.2.4.90",),
    ("1.2.840.10008.1.2.4.70",),  # JPEG Lossless SV1 and process 14 apart: a PACS picks one of a
    ("1.2.840.10008.1.2.4.57",),  # context's syntaxes by its own order (qrscp then drops the other)
    ("1.2.840.10008.1.2.4.80",),
    ("1.2.840.10008.1.2.5",),
    ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"),  # JPEG Baseline / Extended (lossy)
    ("1.2.840.10008.1.2.4.91",),  # JPEG 2000 (lossy allowed)
)
#: The image classes a research retrieval meets most (each gets every family above).
_COMMON_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray For Presentation
    "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography For Presentation
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
)
#: Non-image objects a study often holds beside its images: listed before pynetdicom's order.
_ALSO_IN_STUDIES = (
    "1.2.840.10008.5.1.4.1.1.88.67",  # X-Ray Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection Document
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
)
#: PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255, so at most 128 contexts.
MAX_CONTEXTS = 128


def _check(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"TransferSyntaxPolicy {policy!r} is not one of {', '.join(POLICIES)}")


def is_lossy(transfer_syntax: str) -> bool:
    """True for a syntax outside the lossless and uncompressed sets (lossy, video, by reference)."""
    return str(transfer_syntax) not in UNCOMPRESSED + LOSSLESS_COMPRESSED


def acceptor_order(policy: str = "lossless") -> list[str]:
    """The transfer syntaxes the Storage SCP accepts, in the order it prefers them."""
    _check(policy)
    if policy == "uncompressed":
        return [*UNCOMPRESSED, *LOSSLESS_COMPRESSED, *LOSSY]
    if policy == "never-lossy":
        return [*LOSSLESS_COMPRESSED, *UNCOMPRESSED]
    return [*LOSSLESS_COMPRESSED, *UNCOMPRESSED, *LOSSY]


def get_contexts(policy: str = "lossless", reserved: int = 2) -> list[PresentationContext]:
    """The storage contexts a C-GET proposes (with the SCP role), leaving *reserved* for FIND/GET.

    The common image classes get one context per syntax family, each
    family's syntaxes in the policy's order; then other storage classes, in
    pynetdicom's order of commonness, get one context with the whole list
    while contexts remain.
    """
    order = acceptor_order(policy)
    rank = {ts: i for i, ts in enumerate(order)}
    families = [sorted((ts for ts in f if ts in rank), key=rank.__getitem__) for f in _FAMILIES]
    families = [f for f in families if f]
    if policy == "uncompressed":
        families.sort(key=lambda f: rank[f[0]])
    contexts: list[PresentationContext] = []

    def add(abstract: str, syntaxes: list[str]) -> None:
        contexts.append(build_context(abstract, syntaxes))

    room = MAX_CONTEXTS - reserved
    for abstract in _COMMON_CLASSES:
        for family in families:
            add(abstract, family)
    others = [*_ALSO_IN_STUDIES]
    for context in StoragePresentationContexts:
        uid = context.abstract_syntax
        if uid is not None and not uid.is_retired and uid not in others and uid not in _COMMON_CLASSES:
            others.append(str(uid))
    for abstract in others[: max(0, room - len(contexts))]:
        add(abstract, order)
    return contexts
