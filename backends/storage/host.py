"""The host that keeps a device's spilled tensors: the remote protocol over TCP or serial.

Data lives in one file, `DIR/tinyplan_storage.bin`, of `capacity` bytes, so it survives
client reconnects and host restarts. Every request is range-checked against the
capacity before the file is touched, and no request costs more than one frame's
4 KiB; nothing else in DIR is ever opened. After a damaged frame nothing more on that
stream is interpreted (docs/remote_protocol.md, "Guarantees").
"""

from __future__ import annotations

import functools
import os
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from backends.storage.protocol import (
    MAX_PAYLOAD,
    RESPONSE,
    Damaged,
    Frame,
    FrameDecoder,
    Op,
    Status,
    encode_frame,
)
from planner.errors import PlannerError

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
            if f.payload or f.size > MAX_PAYLOAD:  # one frame never costs more than 4 KiB
                return Status.SIZE, 0, b""
            if not self._in_range(f.position, f.size):
                return Status.RANGE, 0, b""
            with self._lock:
                os.pwrite(self._fd, bytes([ERASED]) * f.size, f.position)
            return Status.OK, f.size, b""
        return Status.OP, 0, b""


def serve_stream(backend: StorageBackend, recv: Callable[[], bytes],
                 send: Callable[[bytes], None], stopped: Callable[[], bool],
                 on_damage: Callable[[FrameDecoder], bool] | None = None) -> None:
    """Answer frames until `stopped()` is true (checked whenever `recv` returns b"").

    After a damaged frame the decoder discards input; `on_damage(decoder)` says what
    happens next: return False to end the stream (TCP closes the connection), or True
    to go on (serial resets the decoder once the line has been quiet). Without it the
    stream ends. `recv` returning b"" with nothing pending is a quiet line.
    """
    decoder = FrameDecoder()
    while not stopped():
        data = recv()
        if not data:
            if stopped():
                return
            if decoder.poisoned:  # a quiet line: the damaged frame's bytes are all gone
                decoder.reset()
            continue
        for item in decoder.feed(data):
            send(encode_frame(backend.handle(item)))
        if decoder.poisoned and (on_damage is None or not on_damage(decoder)):
            return


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
                 ready: Callable[[], None] | None = None,
                 open_port: Callable[[], object] | None = None,
                 retry_seconds: float = 1.0) -> None:
    """Serve over a serial port (pyserial; `device` may be a pyserial URL such as loop://).

    `ready` is called once the port is open. When the link drops (USB unplugged,
    cable pulled: pyserial raises) the host says so on stderr and reopens the device
    every `retry_seconds` until it is back, then serves on; the data file is untouched.
    After a damaged frame input is discarded until the line has been quiet for one
    read timeout (0.2 s): a client waits for an answer, so that gap always comes.
    """
    import serial  # only the serial side needs pyserial

    stop = stop or threading.Event()

    def default_open():
        return serial.serial_for_url(device, baudrate=baud, timeout=0.2)

    opener = open_port or default_open
    try:
        port = opener()
    except (serial.SerialException, ValueError, OSError) as exc:
        raise PlannerError(f"cannot open serial device {device}: {exc}") from None
    if ready is not None:
        ready()
    while not stop.is_set():
        try:
            serve_stream(backend, functools.partial(_read_some, port), port.write,
                         stop.is_set, on_damage=lambda decoder: True)
            break
        except (serial.SerialException, OSError) as exc:
            _close_quietly(port)
            print(f"storage host: serial link {device} lost ({exc}); waiting for it to return",
                  file=sys.stderr, flush=True)
            port = _reopen(opener, stop, retry_seconds)
            if port is None:
                return
            print(f"storage host: serial link {device} is back", file=sys.stderr, flush=True)
    _close_quietly(port)


def _read_some(port) -> bytes:
    return port.read(max(1, port.in_waiting))


def _reopen(opener: Callable[[], object], stop: threading.Event, every: float):
    import serial

    while not stop.wait(every):
        try:
            return opener()
        except (serial.SerialException, ValueError, OSError):
            continue
    return None


def _close_quietly(port) -> None:
    try:
        port.close()
    except Exception:  # noqa: BLE001 - a port whose device vanished may fail to close
        pass
