"""The framed storage protocol between a device and the host that keeps its spilled tensors.

One frame, all integers little-endian (docs/remote_protocol.md has the full table):

    A5 5A | id u16 | op u8 | status u8 | position u32 | size u32 | length u32 |
    payload[length] | crc32 u32 | 5A A5

The CRC-32 (IEEE, as zlib) covers id..payload. A request carries op READ/WRITE/
ERASE/FLUSH/INFO; the host answers with op | 0x80, the same id and a status. A
frame that fails its checksum or end marker is answered with status CHECKSUM when
its id is readable; the client then resends with a fresh id, up to `retries` times.
Responses with an id other than the pending one are stale and dropped. The C
client in backends/c/tp_storage_remote.c speaks exactly this.
"""

from __future__ import annotations

import socket
import struct
import time
import zlib
from dataclasses import dataclass
from enum import IntEnum

from planner.errors import PlannerError

START = b"\xa5\x5a"
END = b"\x5a\xa5"
_HEADER = struct.Struct("<HBBIII")  # id, op, status, position, size, length
HEADER_BYTES = len(START) + _HEADER.size
TRAILER_BYTES = 4 + len(END)
MAX_PAYLOAD = 4096  # per frame; longer transfers are split into several requests
RESPONSE = 0x80


class Op(IntEnum):
    READ = 1  # position, size: answer carries `size` bytes
    WRITE = 2  # position, payload
    ERASE = 3  # position, size: bytes become 0xFF
    FLUSH = 4  # make everything written durable
    INFO = 5  # answer's size field holds the capacity


class Status(IntEnum):
    OK = 0
    CHECKSUM = 1  # frame damaged in transit: resend
    RANGE = 2  # position + size beyond capacity
    SIZE = 3  # payload, READ or ERASE larger than MAX_PAYLOAD, or length/size mismatch
    OP = 4  # unknown op
    IO = 5  # the host could not read or write its file


class RemoteStorageError(PlannerError):
    """A request the host refused, or one that failed after every retry."""


@dataclass(frozen=True)
class Frame:
    id: int
    op: int
    status: int = Status.OK
    position: int = 0
    size: int = 0
    payload: bytes = b""


@dataclass(frozen=True)
class Damaged:
    """A frame whose checksum or end marker is wrong; `id` as read (may itself be damaged)."""

    id: int


def status_name(status: int) -> str:
    try:
        return Status(status).name
    except ValueError:
        return f"status {status}"


def _op_name(op: int) -> str:
    try:
        return Op(op).name
    except ValueError:
        return f"op {op}"


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_frame(frame: Frame) -> bytes:
    if len(frame.payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(frame.payload)} B exceeds {MAX_PAYLOAD}")
    body = _HEADER.pack(frame.id & 0xFFFF, frame.op, frame.status, frame.position,
                        frame.size, len(frame.payload)) + frame.payload
    return START + body + struct.pack("<I", crc32(body)) + END


class FrameDecoder:
    """Incremental decoder over a byte stream that may drop, add or flip bytes.

    Bytes before a start marker are skipped. A frame whose checksum, end marker or
    length field is wrong is reported once as `Damaged` and then the decoder is
    *poisoned*: it discards every further byte until `reset()`. It never rescans
    inside a damaged frame, so bytes that arrived as payload are never read as a
    frame (a damaged length could otherwise put the scan inside the payload). The
    owner decides when the stream is clean again: the TCP host closes the connection,
    the serial host waits for a quiet line, a client reconnects or drains.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.poisoned = False

    def feed(self, data: bytes) -> list[Frame | Damaged]:
        if self.poisoned:
            return []
        self._buf += data
        out: list[Frame | Damaged] = []
        while True:
            start = self._buf.find(START)
            if start < 0:
                # Keep a trailing 0xA5: it may be the first half of a marker.
                del self._buf[: max(0, len(self._buf) - 1)]
                return out
            del self._buf[:start]
            if len(self._buf) < HEADER_BYTES:
                return out
            fid, op, status, position, size, length = _HEADER.unpack_from(self._buf, len(START))
            if length > MAX_PAYLOAD:
                return self._poison(out, fid)
            total = HEADER_BYTES + length + TRAILER_BYTES
            if len(self._buf) < total:
                return out
            body = bytes(self._buf[len(START): HEADER_BYTES + length])
            (crc,) = struct.unpack_from("<I", self._buf, HEADER_BYTES + length)
            if crc != crc32(body) or self._buf[total - len(END): total] != END:
                return self._poison(out, fid)
            out.append(Frame(fid, op, status, position, size, body[_HEADER.size:]))
            del self._buf[:total]

    def _poison(self, out: list[Frame | Damaged], fid: int) -> list[Frame | Damaged]:
        out.append(Damaged(fid))
        self._buf.clear()
        self.poisoned = True
        return out

    def reset(self) -> None:
        self._buf.clear()
        self.poisoned = False


class RemoteStorageClient:
    """Blocking client over TCP (the host side of a serial link uses the same frames).

    Every request is idempotent (a write puts the same bytes at the same place), so a
    damaged or lost frame is simply sent again; after a timeout the connection is
    re-opened, which also drops any half-received frame on the host.
    """

    def __init__(self, host: str, port: int, timeout: float = 2.0, retries: int = 3,
                 chunk: int = MAX_PAYLOAD) -> None:
        if not 0 < chunk <= MAX_PAYLOAD:
            raise PlannerError(f"chunk must be 1..{MAX_PAYLOAD} bytes")
        self.host, self.port = host, port
        self.timeout, self.retries, self.chunk = timeout, retries, chunk
        self._next_id = 1
        self._sock: socket.socket | None = None
        self._decoder = FrameDecoder()
        self.retried = 0  # requests sent again: tests and diagnostics read it
        self._connect()

    def _connect(self) -> None:
        self._close_socket()
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise RemoteStorageError(
                f"cannot reach storage host {self.host}:{self.port}: {exc}") from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._decoder.reset()

    def _close_socket(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def close(self) -> None:
        self._close_socket()

    def __enter__(self) -> RemoteStorageClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, data: bytes) -> None:
        """Hook for tests that damage frames in transit."""
        assert self._sock is not None
        self._sock.sendall(data)

    def _request(self, op: int, position: int = 0, size: int = 0, payload: bytes = b"") -> Frame:
        last = "no answer"
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
            fid = self._next_id
            self._next_id = (self._next_id % 0xFFFF) + 1
            try:
                if self._sock is None:
                    self._connect()
                self._send(encode_frame(Frame(fid, op, Status.OK, position, size, payload)))
                answer = self._await(fid)
            except (TimeoutError, OSError) as exc:
                last = f"transport: {exc or 'timeout'}"
                self._close_socket()  # reconnect: the host drops any half frame with it
                continue
            if isinstance(answer, Damaged):
                last = "damaged frame"
                self._close_socket()  # the stream is no longer in step: start a clean one
                continue
            if answer.status == Status.CHECKSUM:
                last = "host saw a damaged frame"
                self._close_socket()  # the host drops the connection after a damaged frame
                continue
            if answer.status != Status.OK:
                raise RemoteStorageError(
                    f"storage host refused {_op_name(op)} at {position} (+{size} B): "
                    f"{status_name(answer.status)}")
            return answer
        raise RemoteStorageError(
            f"{_op_name(op)} at {position} failed after {self.retries + 1} attempts ({last})")

    def _await(self, fid: int) -> Frame | Damaged:
        assert self._sock is not None
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timeout")
            self._sock.settimeout(remaining)
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionError("storage host closed the connection")
            for item in self._decoder.feed(data):
                if isinstance(item, Damaged):
                    return item  # cannot trust its id: treat as ours and resend
                if item.id == fid and item.op & RESPONSE:
                    return item

    def info(self) -> int:
        """The host's capacity in bytes."""
        return self._request(Op.INFO).size

    def write(self, address: int, data: bytes) -> None:
        for pos in range(0, len(data), self.chunk):
            piece = bytes(data[pos: pos + self.chunk])
            self._request(Op.WRITE, address + pos, len(piece), piece)

    def read(self, address: int, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            n = min(self.chunk, size - len(out))
            answer = self._request(Op.READ, address + len(out), n)
            if len(answer.payload) != n:
                raise RemoteStorageError(f"READ at {address + len(out)}: got "
                                         f"{len(answer.payload)} B, asked {n}")
            out += answer.payload
        return bytes(out)

    def erase(self, address: int, size: int) -> None:
        for pos in range(0, size, MAX_PAYLOAD):
            self._request(Op.ERASE, address + pos, min(MAX_PAYLOAD, size - pos))

    def flush(self) -> None:
        self._request(Op.FLUSH)
