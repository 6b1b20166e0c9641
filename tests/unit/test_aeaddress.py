"""AE addresses in upstream's forms; bad titles and ports are named."""

from __future__ import annotations

import pytest

from niffler.common.errors import ConfigError
from niffler.net.address import AEAddress, validate_ae_title


def test_src_aet_form() -> None:
    assert AEAddress.parse("SRC_AET@pacs.example.org:104") == AEAddress("SRC_AET", "pacs.example.org", 104)


def test_query_aet_form_gets_default_host() -> None:
    assert AEAddress.parse("QBNIFFLER:4243") == AEAddress("QBNIFFLER", "127.0.0.1", 4243)


def test_ipv6_host_brackets_are_dropped() -> None:
    assert AEAddress.parse("PACS@[::1]:104").host == "::1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("PACS", "no port"),
        ("PACS@host", "expected AET@host:port"),
        ("PACS@host:0", "port must be a number from 1 to 65535"),
        ("PACS@host:70000", "port must be"),
        ("PACS@host:abc", "port must be"),
        ("@host:104", "title is empty"),
        ("A_TITLE_FAR_TOO_LONG@host:104", "longer than 16"),
        ("BAD\\AE@host:104", "backslash or control"),
    ],
)
def test_bad_addresses_are_refused_with_reason(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AEAddress.parse(text, "SrcAet")


def test_title_spaces_are_not_significant() -> None:
    assert validate_ae_title("  NIFFLER ") == "NIFFLER"
