#!/usr/bin/env python3
"""Memory per idle client of a PostgreSQL proxy.

Opens N client connections to the proxy, completes the startup (the proxy
must let the user in without a password: auth_type trust), waits until every
one got ReadyForQuery, then reads the proxy's resident memory (VmRSS) and
reports (RSS with N idle clients - RSS before) / N.

    python3 bench/proxy_idle_clients.py --port 16440 --pid PID [--clients 10000]

Needs a file descriptor limit above N in this shell and in the proxy's.
Stops by itself: every connection is closed when it exits.
"""
import argparse
import asyncio
import resource
import struct
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def startup(user, database):
    body = struct.pack("!i", 196608) + f"user\0{user}\0database\0{database}\0\0".encode()
    return struct.pack("!i", len(body) + 4) + body


async def login(port, user, database, conns):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(startup(user, database))
    await writer.drain()
    while True:
        tag = await reader.readexactly(1)
        (length,) = struct.unpack("!i", await reader.readexactly(4))
        body = await reader.readexactly(length - 4)
        if tag == b"Z":
            break
        if tag == b"E":
            raise RuntimeError(f"login refused: {body!r}")
    conns.append((reader, writer))


async def main(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.clients + 100:
        raise SystemExit(f"the file descriptor limit ({hard}) is below {args.clients}")
    before = rss_kib(args.pid)
    conns = []
    gate = asyncio.Semaphore(200)

    async def one():
        async with gate:
            await login(args.port, args.user, args.database, conns)

    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*[one() for _ in range(args.clients)]), args.timeout)
    await asyncio.sleep(args.settle)
    after = rss_kib(args.pid)
    per_client = (after - before) * 1024 / len(conns)
    print(f"clients={len(conns)} login_seconds={time.monotonic() - started:.1f} "
          f"rss_before_kib={before} rss_after_kib={after} bytes_per_idle_client={per_client:.0f}")
    for _, writer in conns:
        writer.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True, help="proxy port")
    p.add_argument("--pid", type=int, required=True, help="proxy process id (for VmRSS)")
    p.add_argument("--clients", type=int, default=10000)
    p.add_argument("--user", default="postgres")
    p.add_argument("--database", default="postgres")
    p.add_argument("--settle", type=float, default=2.0, help="seconds to wait before reading RSS")
    p.add_argument("--timeout", type=float, default=300.0, help="upper bound of the logins")
    asyncio.run(main(p.parse_args()))
