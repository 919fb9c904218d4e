"""A socket spec is read once into an Endpoint: what libmilter, Postfix and socket() take."""

import socket

import pytest

from spfmilter.endpoint import Endpoint


@pytest.mark.parametrize("text,kind,path,host,port,spec", [
    ("unix:/run/spfmilter/spfmilter.sock", "unix", "/run/spfmilter/spfmilter.sock", "", 0,
     "unix:/run/spfmilter/spfmilter.sock"),
    ("local:/var/run/x.sock", "unix", "/var/run/x.sock", "", 0, "unix:/var/run/x.sock"),
    ("  UNIX:/a b  ", "unix", "/a b", "", 0, "unix:/a b"),
    ("inet:8894@127.0.0.1", "inet", "", "127.0.0.1", 8894, "inet:8894@127.0.0.1"),
    ("inet:8894", "inet", "", "", 8894, "inet:8894"),
    ("Inet:25@mx.example.com", "inet", "", "mx.example.com", 25, "inet:25@mx.example.com"),
    ("inet6:8894@::1", "inet6", "", "::1", 8894, "inet6:8894@::1"),
    ("inet6:8894@[::1]", "inet6", "", "[::1]", 8894, "inet6:8894@[::1]"),
])
def test_libmilter_specs_read_once_and_written_back_as_libmilter_takes_them(
        text, kind, path, host, port, spec):
    ep = Endpoint.parse(text)
    assert (ep.kind, ep.path, ep.host, ep.port) == (kind, path, host, port)
    assert str(ep) == spec
    assert Endpoint.parse(str(ep)) == ep


@pytest.mark.parametrize("text,message", [
    ("", "expected inet:PORT@HOST, inet6:PORT@HOST or unix:/path, got ''"),
    ("unix:", "expected inet:PORT@HOST, inet6:PORT@HOST or unix:/path, got 'unix:'"),
    ("/run/x.sock", "expected inet:PORT@HOST, inet6:PORT@HOST or unix:/path, got '/run/x.sock'"),
    ("unix:relative/path", "a unix socket needs an absolute path, got 'unix:relative/path'"),
    ("inet:0@127.0.0.1", "bad port in 'inet:0@127.0.0.1'"),
    ("inet:65536", "bad port in 'inet:65536'"),
    ("inet:port@host", "bad port in 'inet:port@host'"),
    ("inet:25@bad_host!", "bad host in 'inet:25@bad_host!'"),
    ("inet:25@::1", "inet does not take the address '::1'"),
    ("inet6:25@127.0.0.1", "inet6 does not take the address '127.0.0.1'"),
    ("tcp:25", "unknown socket type 'tcp': use inet:, inet6: or unix:"),
])
def test_a_bad_spec_is_one_line_naming_what_is_wrong(text, message):
    with pytest.raises(ValueError) as err:
        Endpoint.parse(text)
    assert str(err.value) == message


def test_socket_family_and_address_for_bind_and_connect():
    unix = Endpoint.parse("unix:/run/s.sock")
    assert (unix.family, unix.address) == (socket.AF_UNIX, "/run/s.sock")
    assert (unix.unix_path is not None, unix.tcp_port) == (True, None)
    everywhere = Endpoint.parse("inet:8894")
    assert (everywhere.family, everywhere.address) == (socket.AF_INET, ("0.0.0.0", 8894))
    assert (everywhere.unix_path, everywhere.tcp_port) == (None, 8894)
    v6 = Endpoint.parse("inet6:8894@[::1]")
    assert (v6.family, v6.address) == (socket.AF_INET6, ("::1", 8894))
    assert Endpoint.parse("inet6:8894").address == ("::", 8894)


def test_where_a_local_client_connects_written_as_postfix_names_it():
    assert Endpoint.parse("inet:8894").connectable() == Endpoint("inet", host="127.0.0.1",
                                                                 port=8894)
    v6 = Endpoint.parse("inet6:8894@::1").connectable()
    assert v6.family == socket.AF_INET6 and v6.postfix() == "inet:::1:8894"
    assert str(v6) == "inet:8894@::1"
    unix = Endpoint.parse("local:/run/s.sock")
    assert unix.connectable() == unix and unix.postfix() == "unix:/run/s.sock"
