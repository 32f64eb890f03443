"""`storage-host (--serial DEVICE [--baud N] | --tcp HOST:PORT)`: keep spilled tensors."""

from __future__ import annotations

import argparse
import sys
import threading

from ..errors import PlannerError
from ..units import UINT32_MAX, parse_size

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(sub) -> None:
    p = sub.add_parser("storage-host", help="serve the remote storage protocol over serial or TCP",
                       description="Keep spilled tensors for a device (or `run --storage "
                       "remote`). Runs until Ctrl-C, then exits 130.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--serial", metavar="DEVICE", help="serial device (or pyserial URL)")
    where.add_argument("--tcp", metavar="HOST:PORT", help="listen on TCP, e.g. 127.0.0.1:9000")
    p.add_argument("--baud", type=int, default=115200, help="serial baud rate")
    p.add_argument("--capacity", default="1MiB", help="bytes the host keeps")
    p.add_argument("--dir", default=".", help="folder of the data file")
    p.add_argument("--public", action="store_true",
                   help="allow a non-loopback TCP address (the protocol has no authentication)")
    p.set_defaults(run=run)


def parse_tcp(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise PlannerError(f"malformed --tcp {text!r}: use HOST:PORT such as 127.0.0.1:9000")
    return host.strip("[]") or "127.0.0.1", int(port)


def run(args: argparse.Namespace) -> int:
    from backends.storage.host import StorageBackend, StorageHostServer, serve_serial

    capacity = parse_size(args.capacity, "--capacity", maximum=UINT32_MAX, minimum=1)
    if args.baud <= 0:
        raise PlannerError(f"--baud must be positive, got {args.baud}")
    if args.tcp:
        host, port = parse_tcp(args.tcp)
        if host not in LOOPBACK and not args.public:
            raise PlannerError(f"{host} is not loopback: pass --public to serve it anyway")
        server = StorageHostServer(capacity, args.dir, host, port)
        bound = server.start()
        print(f"storage host on {host}:{bound}, {capacity:,} B in {server.backend.path}",
              file=sys.stderr, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:  # the usual way to stop it: exit 130 as every command does
            return 130
        finally:
            server.stop()
    backend = StorageBackend(capacity, args.dir)

    def announce() -> None:
        print(f"storage host on {args.serial} at {args.baud} baud, {capacity:,} B in "
              f"{backend.path}", file=sys.stderr, flush=True)

    try:
        serve_serial(backend, args.serial, args.baud, ready=announce)
    except KeyboardInterrupt:
        return 130
    finally:
        backend.close()
    return 0
