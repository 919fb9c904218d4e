"""TCP_NODELAY on the listening socket libmilter opened (spfmilter/sockopts.py)."""

import socket

from spfmilter.sockopts import listening_sockets, tune_listener


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
