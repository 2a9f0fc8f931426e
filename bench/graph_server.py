"""A fast stand-in for Meta's Graph API for the Cloud API bench (``bench/cloud.py``): its own
process (its CPU is not the worker's), HTTP/1.1 keep-alive with h11 on trio, answering what the
Cloud API transport asks: the number's node (tier HIGH: 1,000 messages a second) and
``POST /<version>/<id>/messages`` (a ``wamid``). ``GET /stats`` gives the count of sends and the
monotonic times of the first and the last. Usage: ``python bench/graph_server.py PORT_FILE``
(the bound port is written there)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import h11
import trio

STATS = {"sends": 0, "first": 0.0, "last": 0.0}


def _answer(method: bytes, target: bytes) -> bytes:
    path = target.split(b"?")[0]
    if method == b"POST" and path.endswith(b"/messages"):
        now = time.monotonic()
        STATS["sends"] += 1
        STATS["first"] = STATS["first"] or now
        STATS["last"] = now
        wamid = f"wamid.{STATS['sends']}"
        return json.dumps({"messaging_product": "whatsapp", "messages": [{"id": wamid}]}).encode()
    if path == b"/stats":
        return json.dumps(STATS).encode()
    return json.dumps(
        {"display_phone_number": "+1 555-010-0000", "id": "1", "throughput": {"level": "HIGH"}}
    ).encode()


async def _serve(stream: trio.SocketStream) -> None:
    try:
        await _connection(stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        pass  # the client went away: its connection only


async def _connection(stream: trio.SocketStream) -> None:
    connection = h11.Connection(h11.SERVER)
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data:
                return
            connection.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            body = _answer(request.method, request.target)
            headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
            out = connection.send(h11.Response(status_code=200, headers=headers))
            out += connection.send(h11.Data(data=body)) + connection.send(h11.EndOfMessage())
            await stream.send_all(out)
            connection.start_next_cycle()
        elif isinstance(event, h11.ConnectionClosed):
            return


async def main(port_file: Path) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port_file.write_text(str(listeners[0].socket.getsockname()[1]))
    await trio.serve_listeners(_serve, listeners)


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]))
