"""Read and write .tflite files through the flatbuffer object API tflite-micro ships.

No TensorFlow: `tflite_micro`'s `schema_py_generated` has `ModelT` and `Pack`. Buffers
are re-packed 16-byte aligned (TFLM reads int32 metadata and bias data in place).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from planner.errors import PlannerError
from planner.kernels import KERNELS

OFFLINE_METADATA = "OfflineMemoryAllocation"
PEAK_METADATA = "TinyPlanPeak"
STORAGE_METADATA = "TinyPlanStorages"
# Custom ops only the generated C glue (or the Python executor) can run.
# The project's custom ops, from the one kernel table.
CUSTOM_OPS = tuple(k.custom_op for k in KERNELS.values())


def schema():
    from planner.tflite_schema import schema as load

    return load()


def read_model(source: str | Path | bytes) -> Any:
    """A mutable `ModelT` of a .tflite file (path) or its bytes; one-line error on bad input."""
    fb = schema()
    if isinstance(source, (bytes, bytearray)):
        data, where = bytes(source), "model"
    else:
        where = str(source)
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise PlannerError(f"{where}: cannot read: {exc.strerror or exc}") from None
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise PlannerError(f"{where}: not a TFLite file (no 'TFL3' identifier)")
    try:
        return fb.ModelT.InitFromPackedBuf(data, 0)
    except Exception as exc:  # flatbuffers raises struct/Index/Value errors on cut files
        why = type(exc).__name__
        raise PlannerError(f"{where}: unparsable TFLite flatbuffer ({why})") from None


def _aligned_buffer_class(fb):
    class AlignedBufferT(fb.BufferT):
        """BufferT whose data vector starts on a 16-byte boundary."""

        def Pack(self, builder):  # noqa: N802 - flatbuffers' name
            data = None
            if self.data is not None and len(self.data) > 0:
                raw = bytes(bytearray(self.data))
                builder.StartVector(1, len(raw), 16)
                builder.head = builder.head - len(raw)
                builder.Bytes[builder.head:builder.head + len(raw)] = raw
                data = builder.EndVector()
            fb.BufferStart(builder)
            if data is not None:
                fb.BufferAddData(builder, data)
            fb.BufferAddOffset(builder, self.offset)
            fb.BufferAddSize(builder, self.size)
            return fb.BufferEnd(builder)

    return AlignedBufferT


def write_model(model: Any) -> bytes:
    """Serialise a `ModelT` with the TFL3 identifier and 16-byte aligned buffers."""
    import flatbuffers

    fb = schema()
    if any(b is not None and b.offset and b.offset > 1 for b in model.buffers or []):
        raise PlannerError("models with buffers stored after the flatbuffer (>2 GB) "
                           "are not supported")
    cls = _aligned_buffer_class(fb)
    for buf in model.buffers or []:
        if buf is not None and type(buf) is fb.BufferT:
            buf.__class__ = cls
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def tensor_count(model: Any) -> int:
    """Tensors over all subgraphs: the N an OfflineMemoryAllocation entry must carry."""
    return sum(len(sg.tensors or []) for sg in model.subgraphs or [])


def add_buffer(model: Any, data: bytes) -> int:
    fb = schema()
    buf = fb.BufferT()
    buf.data = list(data)
    if model.buffers is None:
        model.buffers = [fb.BufferT()]  # buffer 0 is the empty sentinel by convention
    model.buffers.append(buf)
    return len(model.buffers) - 1


def set_metadata(model: Any, name: str, data: bytes) -> None:
    """Point metadata `name` at a buffer holding `data`, replacing an existing entry."""
    fb = schema()
    for md in model.metadata or []:
        if _name(md.name) == name:
            model.buffers[md.buffer].data = list(data)
            return
    md = fb.MetadataT()
    md.name = name
    md.buffer = add_buffer(model, data)
    model.metadata = [*(model.metadata or []), md]


def get_metadata(model: Any, name: str) -> bytes | None:
    for md in model.metadata or []:
        if _name(md.name) == name and 0 <= md.buffer < len(model.buffers or []):
            data = model.buffers[md.buffer].data
            return bytes(bytearray(data)) if data is not None else b""
    return None


def _name(raw: Any) -> str:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    return str(raw) if raw is not None else ""


def pack_int32(values: Sequence[int]) -> bytes:
    return struct.pack(f"<{len(values)}i", *values)


def unpack_int32(data: bytes) -> list[int]:
    if len(data) % 4:
        raise PlannerError(f"int32 metadata of {len(data)} bytes is not a multiple of 4")
    return list(struct.unpack(f"<{len(data) // 4}i", data))


def offline_entry(offsets: Sequence[int]) -> bytes:
    """The OfflineMemoryAllocation buffer: [version 1, subgraph 0, N, offset_0..offset_N-1]."""
    return pack_int32([1, 0, len(offsets), *offsets])


def read_offline_offsets(model: Any) -> list[int] | None:
    raw = get_metadata(model, OFFLINE_METADATA)
    if raw is None:
        return None
    values = unpack_int32(raw)
    if len(values) < 3 or values[2] != len(values) - 3:
        raise PlannerError("malformed OfflineMemoryAllocation metadata")
    return values[3:]


def custom_op_names(model: Any) -> list[str]:
    """Custom-code names of the operator codes an operator of the model actually uses."""
    fb = schema()
    codes = model.operatorCodes or []
    used = {op.opcodeIndex for sg in model.subgraphs or [] for op in sg.operators or []}
    names = []
    for i in sorted(used):
        if 0 <= i < len(codes):
            code = codes[i]
            if max(code.builtinCode, code.deprecatedBuiltinCode) == fb.BuiltinOperator.CUSTOM:
                names.append(_name(code.customCode))
    return names
