"""A TCP proxy that can stall or reset every connection for a while: the storage endpoint's faults.

    python faultproxy.py LISTEN_PORT TARGET_PORT

SIGUSR1: stall all traffic for 4 s (bytes wait, connections stay open).
SIGUSR2: reset for 3 s (open connections are aborted with RST, new ones refused the same way).
Prints `ready` when listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import struct
import sys

STALL_SECONDS = 4.0
RESET_SECONDS = 3.0


class Faults:
    def __init__(self) -> None:
        self.stall_until = 0.0
        self.reset_until = 0.0
        self.open: set[asyncio.StreamWriter] = set()

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def stall(self) -> None:
        self.stall_until = self.now() + STALL_SECONDS

    def reset(self) -> None:
        self.reset_until = self.now() + RESET_SECONDS
        for writer in list(self.open):
            _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:  # linger 0: close sends RST, as a crashed or overloaded endpoint would
        with contextlib.suppress(OSError):  # already closed by the other side
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, faults: Faults) -> None:
    try:
        while data := await reader.read(65536):
            while faults.now() < faults.stall_until:
                await asyncio.sleep(0.05)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        if faults.now() < faults.reset_until:
            _abort(writer)
        else:
            writer.close()


async def main(listen: int, target: int) -> None:
    faults = Faults()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, faults.stall)
    loop.add_signal_handler(signal.SIGUSR2, faults.reset)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if faults.now() < faults.reset_until:
            _abort(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            _abort(writer)
            return
        faults.open.update((writer, up_writer))
        try:
            await asyncio.gather(pipe(reader, up_writer, faults), pipe(up_reader, writer, faults))
        finally:
            faults.open.difference_update((writer, up_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
