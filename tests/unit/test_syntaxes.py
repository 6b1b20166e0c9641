"""The transfer-syntax policy: lossless before lossy, and C-GET contexts a non-transcoding PACS can use."""

from __future__ import annotations

import pytest
from pynetdicom import ALL_TRANSFER_SYNTAXES

from niffler.net.syntaxes import (
    LOSSLESS_COMPRESSED,
    LOSSY,
    UNCOMPRESSED,
    acceptor_order,
    get_contexts,
    is_lossy,
)

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
CT = "1.2.840.10008.5.1.4.1.1.2"


def test_every_lossless_syntax_comes_before_every_lossy_one() -> None:
    order = acceptor_order()
    assert set(order) == set(ALL_TRANSFER_SYNTAXES)
    last_lossless = max(order.index(ts) for ts in (*UNCOMPRESSED, *LOSSLESS_COMPRESSED))
    assert all(order.index(ts) > last_lossless for ts in LOSSY)
    assert is_lossy(JPEG_BASELINE) and not is_lossy(J2K_LOSSLESS) and not is_lossy(UNCOMPRESSED[1])


def test_policies() -> None:
    assert acceptor_order("uncompressed")[:4] == list(UNCOMPRESSED)
    assert not set(acceptor_order("never-lossy")) & set(LOSSY)
    with pytest.raises(ValueError, match="TransferSyntaxPolicy"):
        acceptor_order("fast")


def test_get_contexts_give_each_common_family_its_own_context_within_the_limit() -> None:
    contexts = get_contexts()
    assert len(contexts) == 126  # 128 less FIND and GET
    ct = [list(c.transfer_syntax) for c in contexts if c.abstract_syntax == CT]
    assert [J2K_LOSSLESS] in ct and [JPEG_BASELINE, "1.2.840.10008.1.2.4.51"] in ct
    assert ct[0] == list(UNCOMPRESSED)
    # The dose SR, key objects and PDFs of a study still have a context.
    classes = {str(c.abstract_syntax) for c in contexts}
    assert {"1.2.840.10008.5.1.4.1.1.88.67", "1.2.840.10008.5.1.4.1.1.88.59",
            "1.2.840.10008.5.1.4.1.1.104.1"} <= classes  # fmt: skip
    never = get_contexts("never-lossy")
    assert not any(set(c.transfer_syntax) & set(LOSSY) for c in never)
