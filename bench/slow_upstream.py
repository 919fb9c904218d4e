"""A DNS forwarder that holds every query for a fixed delay before passing it on.

The slow-upstream cell of ``make bench`` puts it between the milters and NSD
(inside the benchmark's network namespace), so every query a milter does not
answer from its own cache costs what a query to a distant resolver costs, and
the cell shows how much of a message's latency is the milter waiting on DNS.

One asyncio loop: a query is forwarded on a timer ``delay`` seconds after it
arrived, never by a thread or task that sleeps per query, so at the load of
the cell (one transaction at a time) the forwarder adds its delay and next to
nothing else.  UDP queries go to the upstream over UDP with a transaction ID
of the forwarder's own (clients' IDs may collide) and their answers go back
with the client's ID, truncated or not, as the upstream gave them: a client
that then asks over TCP waits the delay again, as it would with a real
resolver.  TCP queries go upstream over a TCP connection of their own.  It
keeps no cache: every query pays the delay.

    python -m bench.slow_upstream LISTEN_HOST LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT DELAY_S

prints ``ready PORT`` once both listeners are bound (LISTEN_PORT 0: a free port).
"""

from __future__ import annotations

import asyncio
import struct
import sys
import time
from typing import cast

#: An answer the upstream never sent is forgotten after this long (its client has given up).
FORGET_AFTER = 10.0


class _Upstream(asyncio.DatagramProtocol):
    """The forwarder's one UDP socket towards the upstream; answers go back to their clients."""

    def __init__(self, front: _Front) -> None:
        self.front = front

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12:
            return
        pending = self.front.pending.pop(data[:2], None)
        if pending is not None and self.front.transport is not None:
            client, client_id, _ = pending
            self.front.transport.sendto(client_id + data[2:], client)


class _Front(asyncio.DatagramProtocol):
    """The UDP listener the milters ask."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.transport: asyncio.DatagramTransport | None = None
        self.upstream: asyncio.DatagramTransport | None = None
        # forwarder's ID -> (client address, client's ID, when forwarded)
        self.pending: dict[bytes, tuple[tuple[str, int], bytes, float]] = {}
        self.next_id = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # the selector's is no subclass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12:
            return
        asyncio.get_running_loop().call_later(self.delay, self.forward, data, addr)

    def forward(self, data: bytes, client: tuple[str, int]) -> None:
        now = time.monotonic()
        if len(self.pending) > 1000:  # answers lost upstream: their clients have given up
            for key in [k for k, (_, _, t) in self.pending.items() if now - t > FORGET_AFTER]:
                del self.pending[key]
        for _ in range(65536):
            self.next_id = (self.next_id + 1) & 0xFFFF
            our_id = struct.pack(">H", self.next_id)
            if our_id not in self.pending:
                break
        else:
            return  # 65,536 queries in flight: drop this one, as a loaded resolver would
        self.pending[our_id] = (client, data[:2], now)
        if self.upstream is not None:
            self.upstream.sendto(our_id + data[2:])


async def _tcp_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      upstream: tuple[str, int], delay: float) -> None:
    """Each query of a client's TCP connection, after the delay, over a TCP connection upstream."""
    try:
        while True:
            try:
                (size,) = struct.unpack(">H", await reader.readexactly(2))
                query = await reader.readexactly(size)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            await asyncio.sleep(delay)  # a timer in the loop, not a thread
            up_reader, up_writer = await asyncio.open_connection(*upstream)
            try:
                up_writer.write(struct.pack(">H", len(query)) + query)
                (size,) = struct.unpack(">H", await up_reader.readexactly(2))
                answer = await up_reader.readexactly(size)
            finally:
                up_writer.close()
            writer.write(struct.pack(">H", len(answer)) + answer)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        return  # the upstream or the client went away: the client sees its connection end
    finally:
        writer.close()


async def serve(listen: tuple[str, int], upstream: tuple[str, int], delay: float) -> None:
    loop = asyncio.get_running_loop()
    front = _Front(delay)
    listener, _ = await loop.create_datagram_endpoint(lambda: front, local_addr=listen)
    port = listener.get_extra_info("sockname")[1]  # port 0: the one the system gave, for TCP too
    up_transport, _ = await loop.create_datagram_endpoint(lambda: _Upstream(front), remote_addr=upstream)
    front.upstream = up_transport
    server = await asyncio.start_server(lambda r, w: _tcp_client(r, w, upstream, delay), listen[0], port)
    print(f"ready {port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    host, port, up_host, up_port, delay = argv
    asyncio.run(serve((host, int(port)), (up_host, int(up_port)), float(delay)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
