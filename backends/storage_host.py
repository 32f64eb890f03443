"""The host that keeps a device's spilled tensors: the remote protocol over TCP or serial.

Data lives in one file, `DIR/tinyplan_storage.bin`, of `capacity` bytes, so it survives
client reconnects and host restarts. Every request is range-checked against the
capacity before the file is touched; nothing else in DIR is ever opened.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from planner.errors import PlannerError

from .remote_protocol import (
    MAX_PAYLOAD,
    RESPONSE,
    Damaged,
    Frame,
    FrameDecoder,
    Op,
    Status,
    encode_frame,
)

DATA_FILE = "tinyplan_storage.bin"
ERASED = 0xFF


class StorageBackend:
    """The byte store behind the protocol: a capacity-bounded file, one lock."""

    def __init__(self, capacity: int, directory: str | Path) -> None:
        if capacity <= 0 or capacity > 0xFFFFFFFF:
            raise PlannerError(f"storage capacity must be 1..{0xFFFFFFFF} bytes, got {capacity}")
        self.capacity = capacity
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.path = self.directory / DATA_FILE
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            if os.fstat(self._fd).st_size < capacity:
                os.ftruncate(self._fd, capacity)
        except OSError as exc:
            raise PlannerError(f"cannot open storage file in {directory}: {exc}") from None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def handle(self, item: Frame | Damaged) -> Frame:
        if isinstance(item, Damaged):
            return Frame(item.id, RESPONSE, Status.CHECKSUM)
        reply = RESPONSE | (item.op & 0x7F)
        try:
            status, size, payload = self._serve(item)
        except OSError:
            status, size, payload = Status.IO, 0, b""
        return Frame(item.id, reply, status, item.position, size, payload)

    def _in_range(self, position: int, size: int) -> bool:
        return 0 <= position and position + size <= self.capacity

    def _serve(self, f: Frame) -> tuple[Status, int, bytes]:
        if f.op == Op.INFO:
            return Status.OK, self.capacity, b""
        if f.op == Op.FLUSH:
            with self._lock:
                os.fsync(self._fd)
            return Status.OK, 0, b""
        if f.op == Op.READ:
            if f.size > MAX_PAYLOAD or f.payload:
                return Status.SIZE, 0, b""
            if not self._in_range(f.position, f.size):
                return Status.RANGE, 0, b""
            with self._lock:
                data = os.pread(self._fd, f.size, f.position)
            return Status.OK, f.size, data.ljust(f.size, b"\0")
        if f.op == Op.WRITE:
            if len(f.payload) != f.size:
                return Status.SIZE, 0, b""
            if not self._in_range(f.position, f.size):
                return Status.RANGE, 0, b""
            with self._lock:
                os.pwrite(self._fd, f.payload, f.position)
            return Status.OK, f.size, b""
        if f.op == Op.ERASE:
            if f.payload:
                return Status.SIZE, 0, b""
            if not self._in_range(f.position, f.size):
                return Status.RANGE, 0, b""
            with self._lock:
                os.pwrite(self._fd, bytes([ERASED]) * f.size, f.position)
            return Status.OK, f.size, b""
        return Status.OP, 0, b""


def serve_stream(backend: StorageBackend, recv: Callable[[], bytes],
                 send: Callable[[bytes], None], stopped: Callable[[], bool]) -> None:
    """Answer frames until `recv` returns b"" with `stopped()` true or raises."""
    decoder = FrameDecoder()
    while not stopped():
        data = recv()
        if not data:
            if stopped():
                return
            continue
        for item in decoder.feed(data):
            send(encode_frame(backend.handle(item)))


class StorageHostServer:
    """TCP storage host; binds loopback unless told otherwise. `start()` returns the port."""

    def __init__(self, capacity: int, directory: str | Path, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.backend = StorageBackend(capacity, directory)
        self.host, self.port = host, port
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def start(self) -> int:
        try:
            listener = socket.create_server((self.host, self.port))
        except OSError as exc:
            self.backend.close()
            raise PlannerError(f"cannot listen on {self.host}:{self.port}: {exc}") from None
        listener.settimeout(0.2)
        self._listener = listener
        self.port = listener.getsockname()[1]
        accept = threading.Thread(target=self._accept_loop, name="storage-host", daemon=True)
        accept.start()
        self._threads.append(accept)
        return self.port

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.add(conn)
            t = threading.Thread(target=self._serve_conn, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve_conn(self, conn: socket.socket) -> None:
        closed = threading.Event()

        def recv() -> bytes:
            data = conn.recv(65536)
            if not data:
                closed.set()
            return data

        try:
            serve_stream(self.backend, recv, conn.sendall,
                         lambda: self._stop.is_set() or closed.is_set())
        except OSError:
            pass  # the client went away; its data is already in the file
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for conn in list(self._conns):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for t in self._threads:
            t.join(timeout=2.0)
        self._threads.clear()
        self.backend.close()

    def __enter__(self) -> StorageHostServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_serial(backend: StorageBackend, device: str, baud: int,
                 stop: threading.Event | None = None,
                 ready: Callable[[], None] | None = None) -> None:
    """Serve over a serial port (pyserial; `device` may be a pyserial URL such as loop://).

    `ready` is called once the port is open.
    """
    import serial  # only the serial side needs pyserial

    stop = stop or threading.Event()
    try:
        port = serial.serial_for_url(device, baudrate=baud, timeout=0.2)
    except (serial.SerialException, ValueError) as exc:
        raise PlannerError(f"cannot open serial device {device}: {exc}") from None
    if ready is not None:
        ready()
    try:
        serve_stream(backend, lambda: port.read(max(1, port.in_waiting)), port.write,
                     stop.is_set)
    finally:
        port.close()
