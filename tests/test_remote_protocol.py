"""The framed remote-storage protocol and its host: frames, damage, refusals, persistence."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import tty
from pathlib import Path

import pytest

from backends.storage.host import DATA_FILE, StorageHostServer
from backends.storage.protocol import (
    MAX_PAYLOAD,
    RESPONSE,
    START,
    Damaged,
    Frame,
    FrameDecoder,
    Op,
    RemoteStorageClient,
    RemoteStorageError,
    Status,
    encode_frame,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def server(tmp_path):
    srv = StorageHostServer(64 * 1024, tmp_path)
    srv.start()
    yield srv
    srv.stop()


class FlakyProxy:
    """Loopback TCP relay that flips one byte of chosen frames, or drops answers."""

    def __init__(self, target_port: int, damage_requests=(), damage_responses=(),
                 drop_responses=()):
        self.target = target_port
        self.damage = {"up": set(damage_requests), "down": set(damage_responses)}
        self.drop = {"up": set(), "down": set(drop_responses)}
        self.counts = {"up": 0, "down": 0}
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        while not self.stop_event.is_set():
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for src, dst, way in ((client, upstream, "up"), (upstream, client, "down")):
                t = threading.Thread(target=self._pump, args=(src, dst, way), daemon=True)
                t.start()
                self.threads.append(t)

    def _pump(self, src, dst, way):
        decoder_buf = bytearray()
        src.settimeout(0.2)
        while not self.stop_event.is_set():
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            decoder_buf += data
            # Relay whole frames so that the n-th frame can be damaged exactly.
            while True:
                start = decoder_buf.find(START)
                length = _frame_length(decoder_buf, start)
                if start < 0 or length is None or len(decoder_buf) < start + length:
                    break
                frame = bytearray(decoder_buf[start:start + length])
                del decoder_buf[:start + length]
                if self.counts[way] in self.damage[way]:
                    frame[len(frame) // 2] ^= 0x5A
                dropped = self.counts[way] in self.drop[way]
                self.counts[way] += 1
                if dropped:
                    continue
                try:
                    dst.sendall(bytes(frame))
                except OSError:
                    return
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.stop_event.set()
        self.listener.close()
        for t in self.threads:
            t.join(timeout=2)


def _frame_length(buf: bytearray, start: int) -> int | None:
    if start < 0 or len(buf) < start + 18:
        return None
    length = int.from_bytes(buf[start + 14:start + 18], "little")
    return 18 + length + 6


def test_frame_round_trip_and_resync():
    frames = [Frame(7, Op.WRITE, Status.OK, 100, 3, b"abc"), Frame(8, Op.READ, 0, 5, 9)]
    wire = b"\x00\xa5garbage" + encode_frame(frames[0]) + b"\x5a" + encode_frame(frames[1])
    dec = FrameDecoder()
    got = []
    for i in range(0, len(wire), 5):  # arbitrary splits across reads
        got += dec.feed(wire[i:i + 5])
    assert got == frames


def test_damaged_frame_poisons_the_decoder_until_reset():
    # Issue 14: the decoder once rescanned two bytes past a damaged frame's start, so a
    # frame hidden in its payload was executed. Now nothing after the damage is read.
    bad = bytearray(encode_frame(Frame(3, Op.WRITE, 0, 0, 4, b"wxyz")))
    bad[20] ^= 1
    good = encode_frame(Frame(4, Op.INFO))
    dec = FrameDecoder()
    assert dec.feed(bytes(bad) + good) == [Damaged(3)]
    assert dec.poisoned and dec.feed(good) == []
    dec.reset()
    assert dec.feed(good) == [Frame(4, Op.INFO)]


def test_oversized_payload_cannot_be_encoded():
    with pytest.raises(ValueError):
        encode_frame(Frame(1, Op.WRITE, 0, 0, MAX_PAYLOAD + 1, bytes(MAX_PAYLOAD + 1)))


def test_write_read_across_chunks(server):
    data = os.urandom(3 * MAX_PAYLOAD + 123)
    with RemoteStorageClient("127.0.0.1", server.port) as c:
        assert c.info() == 64 * 1024
        c.write(1000, data)
        assert c.read(1000, len(data)) == data
        c.erase(1000, 10)
        assert c.read(1000, 12) == b"\xff" * 10 + data[10:12]
        c.flush()


def test_out_of_range_and_oversized_requests_are_refused(server):
    with RemoteStorageClient("127.0.0.1", server.port) as c:
        with pytest.raises(RemoteStorageError, match="RANGE"):
            c.write(64 * 1024 - 2, b"abcd")
        with pytest.raises(RemoteStorageError, match="RANGE"):
            c.read(64 * 1024, 1)
        with pytest.raises(RemoteStorageError, match="SIZE"):
            c._request(Op.READ, 0, MAX_PAYLOAD + 1)
        with pytest.raises(RemoteStorageError, match="OP"):
            c._request(0x33)
        c.write(0, b"ok")  # the host is still serving
        assert c.read(0, 2) == b"ok"
    assert (server.backend.path.stat().st_size) == 64 * 1024
    assert sorted(p.name for p in server.backend.directory.iterdir()) == [DATA_FILE]


def test_refusal_answers_with_error_frame_on_the_wire(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as s:
        s.sendall(encode_frame(Frame(9, Op.WRITE, 0, 2**32 - 2, 2, b"zz")))
        answer = []
        dec = FrameDecoder()
        while not answer:
            answer = dec.feed(s.recv(4096))
    assert answer == [Frame(9, RESPONSE | Op.WRITE, Status.RANGE, 2**32 - 2, 0)]


def test_damaged_request_and_response_are_detected_and_retried(server):
    proxy = FlakyProxy(server.port, damage_requests={0}, damage_responses={2})
    try:
        with RemoteStorageClient("127.0.0.1", proxy.port, timeout=1.0) as c:
            c.write(0, b"hello world")  # request 0 damaged: host answers CHECKSUM, resent
            assert c.retried == 1
            assert c.read(0, 11) == b"hello world"  # response 2 damaged: client resends
            assert c.retried == 2
    finally:
        proxy.close()


def test_lost_answer_times_out_and_is_resent_on_a_new_connection(server):
    proxy = FlakyProxy(server.port, drop_responses={0})
    try:
        with RemoteStorageClient("127.0.0.1", proxy.port, timeout=0.3) as c:
            c.write(0, b"persist")  # answer lost: timeout, reconnect, resend
            assert c.retried == 1
            assert c.read(0, 7) == b"persist"
    finally:
        proxy.close()


def test_retries_are_bounded(server):
    proxy = FlakyProxy(server.port, damage_requests=set(range(100)))
    try:
        with RemoteStorageClient("127.0.0.1", proxy.port, timeout=1.0, retries=2) as c:
            with pytest.raises(RemoteStorageError, match="after 3 attempts"):
                c.write(0, b"x")
            assert c.retried == 2
    finally:
        proxy.close()


def test_reconnect_and_restart_lose_no_data(tmp_path):
    data = os.urandom(5000)
    with StorageHostServer(8192, tmp_path) as srv:
        with RemoteStorageClient("127.0.0.1", srv.port) as c:
            c.write(100, data)
        with RemoteStorageClient("127.0.0.1", srv.port) as c:
            assert c.read(100, len(data)) == data
    with StorageHostServer(8192, tmp_path) as srv, \
            RemoteStorageClient("127.0.0.1", srv.port) as c:
        assert c.read(100, len(data)) == data


def test_cli_serves_loopback_and_refuses_public_address(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    bad = subprocess.run([sys.executable, "-m", "planner", "storage-host", "--tcp",
                          "0.0.0.0:0", "--dir", str(tmp_path)],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "not loopback" in bad.stderr
    proc = subprocess.Popen([sys.executable, "-m", "planner", "storage-host", "--tcp",
                             "127.0.0.1:0", "--capacity", "4KiB", "--dir", str(tmp_path)],
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        line = proc.stderr.readline()
        port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
        with RemoteStorageClient("127.0.0.1", port) as c:
            assert c.info() == 4096
            c.write(4090, b"abcdef")
            assert c.read(4090, 6) == b"abcdef"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert (tmp_path / DATA_FILE).read_bytes()[4090:] == b"abcdef"


def test_serial_side_serves_frames_over_a_pty(tmp_path):
    import pty
    import select

    from backends.storage.host import StorageBackend, serve_serial

    master, slave = pty.openpty()
    tty.setraw(slave)  # no echo, no line discipline: a byte pipe like a UART
    backend = StorageBackend(1024, tmp_path)
    stop = threading.Event()
    server = threading.Thread(target=serve_serial,
                              args=(backend, os.ttyname(slave), 115200, stop), daemon=True)
    server.start()

    def exchange(frame: Frame) -> list:
        # Resend on silence, as a client does: the host flushes its input when it opens
        # the port, so a frame sent before that is lost.
        dec = FrameDecoder()
        for _ in range(20):
            os.write(master, encode_frame(frame))
            ready, _, _ = select.select([master], [], [], 0.5)
            while ready:
                got = [f for f in dec.feed(os.read(master, 4096)) if f.id == frame.id]
                if got:
                    return got
                ready, _, _ = select.select([master], [], [], 0.5)
        raise AssertionError("no answer on the serial line")

    try:
        assert exchange(Frame(1, Op.WRITE, 0, 10, 3, b"abc"))[0].status == Status.OK
        assert exchange(Frame(2, Op.READ, 0, 10, 3)) == [
            Frame(2, RESPONSE | Op.READ, Status.OK, 10, 3, b"abc")]
        assert exchange(Frame(3, Op.READ, 0, 1022, 3))[0].status == Status.RANGE
    finally:
        stop.set()
        server.join(timeout=5)
        os.close(master)
        os.close(slave)
        backend.close()


# -- guarantees (docs/remote_protocol.md, "Guarantees"): one test each ------------------

def _raw_exchange(port: int, wire: bytes) -> tuple[list, bool]:
    """Send raw bytes on a fresh connection; (answers, whether the host closed it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
        s.sendall(wire)
        dec, answers, closed = FrameDecoder(), [], False
        try:
            while True:
                data = s.recv(4096)
                if not data:
                    closed = True
                    break
                answers += dec.feed(data)
        except TimeoutError:
            pass
    return answers, closed


def test_guarantee_payload_of_a_damaged_frame_is_never_executed(server):
    # The attack of issue 14: a WRITE with a bad CRC whose payload is a valid WRITE to
    # data acknowledged earlier. "ORIGINAL" once became "INJECTED".
    with RemoteStorageClient("127.0.0.1", server.port) as c:
        c.write(1000, b"ORIGINAL")
    inner = encode_frame(Frame(77, Op.WRITE, 0, 1000, 8, b"INJECTED"))
    outer = bytearray(encode_frame(Frame(76, Op.WRITE, 0, 0, len(inner) + 8,
                                         b"\0" * 4 + inner + b"\0" * 4)))
    outer[-6] ^= 0xFF  # damage the CRC only: the declared length is intact
    answers, closed = _raw_exchange(server.port, bytes(outer) + inner)
    assert [a.status for a in answers] == [Status.CHECKSUM] and closed
    with RemoteStorageClient("127.0.0.1", server.port) as c:
        assert c.read(1000, 8) == b"ORIGINAL"


def test_guarantee_a_damaged_length_drops_the_connection(server):
    header = bytearray(encode_frame(Frame(5, Op.WRITE, 0, 0, 4, b"abcd")))
    header[14:18] = (MAX_PAYLOAD + 1).to_bytes(4, "little")  # length beyond any frame
    follow = encode_frame(Frame(6, Op.WRITE, 0, 0, 4, b"EVIL"))
    answers, closed = _raw_exchange(server.port, bytes(header) + follow)
    assert [a.status for a in answers] == [Status.CHECKSUM] and closed
    assert (Path(server.backend.path).read_bytes()[:4]) != b"EVIL"


def test_guarantee_erase_span_is_capped_at_one_frame(server):
    # One 24-byte ERASE of 256 MiB was accepted (host RSS 286 MiB).
    answers, _ = _raw_exchange(server.port, encode_frame(Frame(9, Op.ERASE, 0, 0, 256 << 20)))
    assert [a.status for a in answers] == [Status.SIZE]
    with RemoteStorageClient("127.0.0.1", server.port) as c:
        c.write(0, b"x" * 10_000)
        c.erase(0, 10_000)  # the client splits long erases into 4 KiB requests
        assert c.read(0, 10_000) == b"\xff" * 10_000


def test_guarantee_an_ok_write_is_in_the_host_file(server):
    # An OK answer to WRITE means the bytes are in the data file (a host killed
    # afterwards keeps them; FLUSH adds fsync against power loss).
    with RemoteStorageClient("127.0.0.1", server.port) as c:
        c.write(4096, b"acknowledged")
        assert Path(server.backend.path).read_bytes()[4096:4108] == b"acknowledged"
        c.flush()


def test_guarantee_serial_discards_until_quiet_then_serves(tmp_path):
    from backends.storage.host import StorageBackend, serve_stream

    backend = StorageBackend(4096, tmp_path)
    bad = bytearray(encode_frame(Frame(1, Op.WRITE, 0, 0, 4, b"abcd")))
    bad[20] ^= 1
    evil = encode_frame(Frame(2, Op.WRITE, 0, 100, 4, b"EVIL"))
    good = encode_frame(Frame(3, Op.WRITE, 0, 200, 4, b"good"))
    # damaged frame and a frame right behind it in one burst, a quiet read, then a frame
    chunks = [bytes(bad) + evil, evil, b"", good]
    sent: list[bytes] = []
    serve_stream(backend, lambda: chunks.pop(0) if chunks else b"", sent.append,
                 lambda: not chunks, on_damage=lambda decoder: True)
    answers = FrameDecoder().feed(b"".join(sent))
    assert [(a.id, a.status) for a in answers] == [(1, Status.CHECKSUM), (3, Status.OK)]
    data = backend.path.read_bytes()
    assert data[100:104] != b"EVIL" and data[200:204] == b"good"
    backend.close()


def test_guarantee_serial_host_survives_a_dropped_link(tmp_path, capsys):
    import serial

    from backends.storage.host import StorageBackend, serve_serial

    backend = StorageBackend(4096, tmp_path)
    stop = threading.Event()
    replies: list[bytes] = []

    class Port:
        """A serial port that fails like an unplugged USB adapter, then comes back."""

        def __init__(self, script: list) -> None:
            self.script, self.in_waiting = script, 0

        def read(self, n: int) -> bytes:
            if not self.script:
                stop.set()
                return b""
            item = self.script.pop(0)
            if isinstance(item, Exception):
                raise item
            return item

        def write(self, data: bytes) -> None:
            replies.append(data)

        def close(self) -> None:
            pass

    ports = [Port([encode_frame(Frame(1, Op.WRITE, 0, 0, 2, b"hi")),
                   serial.SerialException("device disconnected")]),
             Port([encode_frame(Frame(2, Op.READ, 0, 0, 2))])]
    opened: list[int] = []

    def opener():
        opened.append(1)
        if len(opened) == 2:
            raise serial.SerialException("no such device")  # not back yet
        return ports.pop(0)

    serve_serial(backend, "/dev/ttyFAKE", 115200, stop, open_port=opener, retry_seconds=0.01)
    answers = FrameDecoder().feed(b"".join(replies))
    assert answers[-1] == Frame(2, RESPONSE | Op.READ, Status.OK, 0, 2, b"hi")
    err = capsys.readouterr().err
    assert "lost" in err and "is back" in err and "Traceback" not in err
    backend.close()
