"""The DHCP service under pressure: replies cut to the client's size, floods, odd requests."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from netbootd.logfmt import parse_event
from netbootd.proto.dhcp import MessageType, Opt, decode, encode, u16_option
from tests.dhcp_clients import BIOS_PXE, request
from tests.unit.test_dhcp_service import make_service


async def test_a_reply_too_big_for_the_client_is_trimmed_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, _, _ = make_service(bios="pxelinux.0")
    big = ((119, b"a" * 250), (120, b"b" * 250), (125, b"c" * 250))
    service.settings = dataclasses.replace(service.settings, options=big)
    discover = request(
        MessageType.DISCOVER,
        vendor_class=BIOS_PXE,
        arch=0,
        extra=(
            (Opt.PARAMETER_LIST, bytes([1, 3, 119, 120, 125, 66, 67])),
            (Opt.MAX_MESSAGE_SIZE, u16_option(576)),
        ),
    )
    with caplog.at_level(logging.INFO, logger="netbootd.dhcp"):
        reply = await service.handle(
            decode(encode(discover)), local_port=67, source=("0.0.0.0", 68)
        )
    assert reply is not None and reply.max_size == 576
    wire = encode(reply.packet, max_size=576)
    assert len(wire) <= 576 - 28
    sent = decode(wire)
    assert sent.get(Opt.BOOTFILE) == b"pxelinux.0" and sent.get(Opt.SERVER_ID) is not None
    assert sent.get(119) == b"a" * 250  # the client's first choice stays
    assert sent.get(125) is None  # its last goes first
    trimmed = [
        parse_event(r.getMessage()) for r in caplog.records if "reply-trimmed" in r.getMessage()
    ]
    assert len(trimmed) == 1
    _, fields = trimmed[0]
    left_out = [int(code) for code in fields["left_out"].split(",")]
    assert left_out[0] == 125 and all(sent.get(code) is None for code in left_out)
    assert service.counters["reply-trimmed"] == 1
