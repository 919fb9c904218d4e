"""The milter protocol's wire format as the MTA side writes and reads it (libmilter's mfdef.h)."""

import socket
import struct

import pytest

from spfmilter import milter_protocol as mp


def test_a_packet_is_its_length_then_the_command_and_the_data():
    assert mp.packet(b"H", mp.z(b"helo.test")) == b"\0\0\0\x0bHhelo.test\0"
    assert mp.packet(b"T") == b"\0\0\0\x01T"


def test_option_negotiation_offers_what_postfix_3_offers():
    assert mp.optneg() == b"\0\0\0\x0dO" + struct.pack("!LLL", 6, 0x1FF, 0x1FFFFF)
    assert mp.parse_optneg(ord("O"), struct.pack("!LLL", 6, 0x1FF, 0x3F)) == (6, 0x1FF, 0x3F)
    with pytest.raises(mp.ProtocolError):
        mp.parse_optneg(ord("O"), b"\0\0\0\x06")
    with pytest.raises(mp.ProtocolError):
        mp.parse_optneg(ord("y"), struct.pack("!LLL", 6, 0, 0))


def test_connect_carries_the_family_of_the_address():
    assert mp.connect(b"[192.0.2.1]", b"192.0.2.1", 25)[5:] == \
        b"[192.0.2.1]\x004\x00\x19192.0.2.1\x00"
    assert mp.connect(b"h", b"2001:db8::1")[5:].startswith(b"h\x006")


def test_macros_are_the_stage_then_name_value_pairs():
    assert mp.macros(b"M", [(b"i", b"QID")]) == mp.packet(b"D", b"Mi\0QID\0")


@pytest.mark.parametrize("wire,error", [
    (b"\0\0\0\0", "bad packet length 0"),
    (b"\x7f\0\0\0", "bad packet length"),
    (b"\0\0\0\x05ab", "closed the connection"),
])
def test_a_reply_that_is_not_the_protocol_is_an_error_not_a_hang(wire, error):
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(5)
        a.sendall(wire)
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(mp.ProtocolError, match=error):
            mp.read_packet(b)


def test_a_reply_is_read_whole_from_pieces():
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(5)
        wire = mp.packet(b"y", b"550 5.7.23 no\0")
        for i in range(len(wire)):
            a.sendall(wire[i:i + 1])
        assert mp.read_packet(b) == (ord("y"), b"550 5.7.23 no\0")
