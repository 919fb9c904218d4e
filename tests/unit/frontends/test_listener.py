"""The listening socket libmilter opened: found by port or path, tuned, retired for a drain."""

import os
import socket
import stat

import pytest

from spfmilter.config import ConfigError
from spfmilter.endpoint import Endpoint
from spfmilter.frontends import listener as lst
from spfmilter.frontends.listener import listening_sockets, tune_listener


def _nodelay(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def test_listener_found_and_tuned_and_accepted_sockets_inherit_it():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        assert listening_sockets(port) == [listener.fileno()]
        assert not _nodelay(listener)
        assert tune_listener(Endpoint.parse(f"inet:{port}@127.0.0.1")) == 1
        assert _nodelay(listener)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert _nodelay(accepted)  # Linux: inherited from the listener
            assert client.fileno() >= 0


def test_unix_socket_and_missing_listener_change_nothing():
    assert tune_listener(Endpoint.parse("unix:/run/spfmilter/spfmilter.sock")) == 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: not libmilter's socket
        assert tune_listener(Endpoint.parse(f"inet:{s.getsockname()[1]}")) == 0


def test_unix_listener_found_by_path_and_retired_for_a_drain(tmp_path):
    path = str(tmp_path / "milter.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    fd = listener.fileno()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as early:
        early.connect(path)                      # in flight before the drain
        assert lst.listener_fds(Endpoint.parse(f"unix:{path}")) == [fd]
        dead = lst.retire([fd])
        try:
            assert lst.listener_fds(Endpoint.parse(f"unix:{path}")) == []
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as late:
                try:
                    late.connect(path)
                    refused = False
                except ConnectionRefusedError:
                    refused = True
            assert refused                        # nobody listens there any more
            try:                                  # what libmilter would do: no connection, no block
                listener.accept()
                raise AssertionError("accepted on a retired listener")
            except BlockingIOError:
                pass
        finally:
            dead.close()
            listener.close()


def _socket_file(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))   # closed without unlink: what a killed daemon leaves behind


def test_stale_unix_socket_replaced_under_umask_and_removed_only_while_ours(tmp_path):
    path = tmp_path / "run" / "policy.sock"
    made = []

    def make_dir(folder):
        made.append(folder)
        folder.mkdir()

    opened = lst.listen(Endpoint.parse(f"unix:{path}"), "Policy_Socket", mask=0o077,
                        owner=(os.getuid(), os.getgid()), make_dir=make_dir)
    assert made == [path.parent]
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    opened.remove()
    assert not path.exists()

    _socket_file(path)                          # a previous run's, nobody serves it
    opened = lst.listen(Endpoint.parse(f"unix:{path}"), "Policy_Socket", mask=0o007)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(path))               # ours now, not the stale one
    path.unlink()
    _socket_file(path)                          # another instance made its own meanwhile
    opened.remove()
    assert path.is_socket()                     # not ours to remove


def test_address_in_use_is_one_line_naming_the_setting():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError) as err:
            lst.listen(Endpoint.parse(f"inet:{port}@127.0.0.1"), "Policy_Socket", mask=0o007)
    assert str(err.value) == (f"<settings>: Policy_Socket: cannot listen on inet:{port}@127.0.0.1:"
                              " Address already in use")


def test_tcp_listener_hands_nodelay_to_accepted_sockets():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    opened = lst.listen(Endpoint.parse(f"inet:{port}@127.0.0.1"), "Policy_Socket", mask=0o007)
    try:
        assert opened.sock is not None and _nodelay(opened.sock)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            accepted, _ = opened.sock.accept()
            with accepted:
                assert _nodelay(accepted)
    finally:
        opened.remove()


def test_libmilter_failure_is_its_own_line_naming_socket(tmp_path):
    def opensocket():
        raise RuntimeError("cannot opensocket")  # what pymilter raises; libmilter logs why

    with pytest.raises(ConfigError) as err:
        lst.listen(Endpoint.parse(f"unix:{tmp_path}/milter.sock"), "Socket", mask=0o007,
                   opensocket=opensocket)
    assert str(err.value) == "<settings>: Socket: cannot listen: cannot opensocket"
