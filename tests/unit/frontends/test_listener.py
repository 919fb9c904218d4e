"""The listening socket libmilter opened: found by port or path, tuned, retired for a drain."""

import socket

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
        assert tune_listener(f"inet:{port}@127.0.0.1") == 1
        assert _nodelay(listener)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert _nodelay(accepted)  # Linux: inherited from the listener
            assert client.fileno() >= 0


def test_unix_socket_and_missing_listener_change_nothing():
    assert tune_listener("unix:/run/spfmilter/spfmilter.sock") == 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: not libmilter's socket
        assert tune_listener(f"inet:{s.getsockname()[1]}") == 0


def test_unix_listener_found_by_path_and_retired_for_a_drain(tmp_path):
    path = str(tmp_path / "milter.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    fd = listener.fileno()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as early:
        early.connect(path)                      # in flight before the drain
        assert lst.listener_fds(f"unix:{path}") == [fd]
        dead = lst.retire([fd])
        try:
            assert lst.listener_fds(f"unix:{path}") == []
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
