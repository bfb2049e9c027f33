"""An upstream WebSocket echo node for the relay benchmark: raw asyncio on uvloop, so it is not the bottleneck.

`python -m bench.echo --port P` answers `/health` with 200 and echoes every data frame on any other path.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

import uvloop

from bench.wsproto_min import accept_key, frame, parse_frames


class EchoProtocol(asyncio.Protocol):
    """HTTP head, then frames echoed back unmasked."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only compatible with it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            del self.buf[:end + 4]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
            if "sec-websocket-key" not in headers:
                body = b"ok"
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n" + body)
                self.transport.close()
                return
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                 b"Sec-WebSocket-Accept: " + accept_key(headers["sec-websocket-key"].encode())
                                 + b"\r\n\r\n")
            self.upgraded = True
        frames = parse_frames(self.buf)
        if not frames:
            return
        out = []
        for opcode, payload, _ in frames:
            if opcode == 0x8:
                self.transport.write(frame(payload[:2], opcode=0x8, mask=False))
                self.transport.close()
                return
            if opcode in (0x1, 0x2):
                out.append(frame(payload, opcode=opcode, mask=False))
        self.transport.write(b"".join(out))


async def serve(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(EchoProtocol, host, port, backlog=4096)
    print(f"echo listening on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
