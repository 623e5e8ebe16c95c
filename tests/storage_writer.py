"""A writer process for crash and memory tests: streams a generated document into a store.

    python storage_writer.py STORE_URL KEY SIZE_BYTES [--slow SECONDS_PER_CHUNK] [--endpoint URL]

Prints `progress N` lines as it goes and, at the end, `done SHA256 PEAK_RSS_GROWTH_BYTES`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from collections.abc import AsyncIterator

from storage import PutOptions, open_storage
from storage.s3 import S3Storage

CHUNK = 1 << 20


def block(i: int) -> bytes:
    # Distinct content per chunk, cheaply: a fixed random-ish block tagged with its index.
    return i.to_bytes(8, "big") * (CHUNK // 8)


async def stream(size: int, slow: float) -> AsyncIterator[bytes]:
    sent = 0
    i = 0
    while sent < size:
        piece = block(i)[: size - sent]
        yield piece
        sent += len(piece)
        i += 1
        if i % 16 == 0 or slow:
            print(f"progress {sent}", flush=True)
        if slow:
            await asyncio.sleep(slow)


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM (peak RSS) to the current RSS,
    # so start-up peaks (imports) do not count as growth.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("key")
    parser.add_argument("size", type=int)
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--endpoint")
    args = parser.parse_args()
    if args.endpoint:
        bucket, _, prefix = args.store.removeprefix("s3://").partition("/")
        store = S3Storage(bucket, prefix, endpoint_url=args.endpoint)
    else:
        store = open_storage(args.store)
    reset_peak()
    baseline = status_kib("VmRSS")
    stored = await store.put(args.key, stream(args.size, args.slow), PutOptions())
    peak = status_kib("VmHWM")
    expected = hashlib.sha256()
    for i in range((args.size + CHUNK - 1) // CHUNK):
        expected.update(block(i)[: args.size - i * CHUNK])
    assert stored.sha256 == expected.hexdigest(), "sha256 differs from the stream's"
    print(f"baseline {baseline} KiB, peak {peak} KiB", file=sys.stderr)
    print(f"done {stored.sha256} {(peak - baseline) * 1024}", flush=True)
    await store.close()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
