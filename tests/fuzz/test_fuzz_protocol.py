"""Fuzzing the storage protocol: byte streams to the decoder and frames to the host.

Properties: the decoder never raises and never yields a frame that started inside or
after a damaged frame (payload is never executed); the host answers every frame with
a known status, never raises, never grows its file, and never lets a request cost
more than one frame.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.storage.host import StorageBackend
from backends.storage.protocol import (
    MAX_PAYLOAD,
    RESPONSE,
    Damaged,
    Frame,
    FrameDecoder,
    Status,
    encode_frame,
)
from tests.fuzz.harness import fuzz_settings

frames = st.builds(
    Frame, st.integers(0, 0xFFFF), st.integers(0, 255), st.integers(0, 255),
    st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=64))


@st.composite
def pieces(draw):
    """A stream: a list of (kind, frame, bytes) where kind is good, damaged or garbage."""
    out = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["good", "good", "damaged", "garbage"]))
        if kind == "garbage":
            out.append((kind, None, draw(st.binary(max_size=40))))
            continue
        frame = draw(frames)
        wire = bytearray(encode_frame(frame))
        if kind == "damaged":
            pos = draw(st.integers(2, len(wire) - 1))  # anywhere after the start marker
            wire[pos] ^= draw(st.integers(1, 255))
        out.append((kind, frame, bytes(wire)))
    return out


def _decode(wire: bytes, split: int) -> list:
    dec, got = FrameDecoder(), []
    for i in range(0, len(wire), split):
        got += dec.feed(wire[i:i + split])
    return got


@fuzz_settings(500)
@given(pieces(), st.integers(1, 50))
def test_fuzz_decoder_never_reads_past_damage(stream, split: int) -> None:
    # Garbage without 0xA5 cannot start a marker: the expected output is then exact.
    stream = [(k, f, w.replace(b"\xa5", b"")) if k == "garbage" else (k, f, w)
              for k, f, w in stream]
    got = _decode(b"".join(w for _, _, w in stream), split)
    prefix = []
    for kind, frame, _ in stream:
        if kind == "damaged":
            break
        if kind == "good":
            prefix.append(frame)
    assert [g for g in got if isinstance(g, Frame)] == prefix
    damaged = [i for i, g in enumerate(got) if isinstance(g, Damaged)]
    assert len(damaged) <= 1 and (not damaged or damaged[0] == len(got) - 1)


@fuzz_settings(300)
@given(st.lists(st.one_of(st.binary(max_size=60), frames.map(encode_frame)), max_size=8),
       st.integers(1, 50))
def test_fuzz_decoder_on_raw_bytes(chunks, split: int) -> None:
    got = _decode(b"".join(chunks), split)
    damaged = [i for i, g in enumerate(got) if isinstance(g, Damaged)]
    assert len(damaged) <= 1 and (not damaged or damaged[0] == len(got) - 1)
    for g in got:
        if isinstance(g, Frame):
            assert len(g.payload) <= MAX_PAYLOAD


@fuzz_settings(400)
@given(frames, st.booleans())
def test_fuzz_host_answers_every_frame(tmp_path_factory, frame: Frame, damaged: bool) -> None:
    backend = StorageBackend(4096, tmp_path_factory.mktemp("host"))
    try:
        item = Damaged(frame.id) if damaged else frame
        answer = backend.handle(item)
        assert answer.id == frame.id and answer.op & RESPONSE
        assert answer.status in set(Status)
        assert len(answer.payload) <= MAX_PAYLOAD
        encode_frame(answer)  # always representable on the wire
        if answer.status == Status.OK and not damaged:
            assert frame.position + max(frame.size, len(frame.payload)) <= 4096 or \
                frame.op in (4, 5)
        assert backend.path.stat().st_size == 4096
    finally:
        backend.close()


@pytest.fixture(scope="module")
def live_host(tmp_path_factory):
    from backends.storage.host import StorageHostServer
    from backends.storage.protocol import RemoteStorageClient

    with StorageHostServer(1 << 16, tmp_path_factory.mktemp("live")) as srv:
        with RemoteStorageClient("127.0.0.1", srv.port) as c:
            c.write(60000, b"ACKNOWLEDGED")
        yield srv


@fuzz_settings(100)
@given(pieces())
def test_fuzz_live_host_keeps_acknowledged_data(live_host, stream) -> None:
    """Hostile streams on a fresh connection each, then a clean client: the marker survives."""
    import socket

    from backends.storage.protocol import RemoteStorageClient

    # Hostile frames may only touch 0..59999: the acknowledged bytes are off limits to
    # the frames themselves; what must not happen is a write hidden inside one of them.
    safe = [w for _, f, w in stream
            if f is None or f.position + max(f.size, len(f.payload)) < 60000]
    with socket.create_connection(("127.0.0.1", live_host.port), timeout=1.0) as s:
        try:
            s.sendall(b"".join(safe))
            s.settimeout(0.02)
            while s.recv(65536):
                pass
        except OSError:
            pass  # the host may close on damage: that is the guarantee
    with RemoteStorageClient("127.0.0.1", live_host.port) as c:
        assert c.read(60000, 12) == b"ACKNOWLEDGED"
