"""The row-streaming C runner (backends/c/tp_rows.c) on numpy arrays, through ctypes.

`run_group` runs a streamed group's program (backends/c/group_program.py) over the buffers
of its views, with Python callbacks for the rows it streams in and spills; the executor
runs groups through it, so `planner run` proves the code a device runs. The per-kernel
row entry points are thin wrappers for the tests. The library is built at first use and
cached by source hash, as backends/c/kernels.py does it (the same build function).
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable, Sequence

import numpy as np

from backends.c import kernels as ckernels
from backends.c.kernels import C_DIR, CKernelError

# tp_rows.c reuses tp_kernels.c's conv arithmetic, which links tp_runtime.c / tp_compress.c.
SOURCES = ("tp_rows.c", *ckernels.SOURCES)
HEADERS = ("tp_rows.h", *ckernels.HEADERS)


def _define(name: str) -> int:
    """A numeric #define of tp_rows.h: the limits have one source, the C header."""
    m = re.search(rf"#define\s+{name}\s+\(?(-?(?:0x)?[0-9A-Fa-f]+)\)?", (C_DIR / "tp_rows.h")
                  .read_text())
    if m is None:
        raise CKernelError(f"tp_rows.h defines no {name}")
    return int(m.group(1), 0)


MAX_OPS = _define("TP_GROUP_MAX_OPS")
MAX_VIEWS = _define("TP_GROUP_MAX_VIEWS")
MAGIC = _define("TP_GROUP_MAGIC")
VERSION = _define("TP_GROUP_VERSION")
TP_EPROGRAM = _define("TP_EPROGRAM")
TP_ESCHEDULE = _define("TP_ESCHEDULE")
TP_EIO_CALLBACK = _define("TP_EIO_CALLBACK")
ERRORS = {TP_EPROGRAM: "TP_EPROGRAM (malformed group program)",
          TP_ESCHEDULE: "TP_ESCHEDULE (a row out of order, repeated or missing)",
          TP_EIO_CALLBACK: "TP_EIO_CALLBACK (a stream-in read or spill-rows write failed)",
          ckernels.TP_ECONFIG: "TP_ECONFIG (unsupported parameters)",
          ckernels.TP_EPLAN: "TP_EPLAN (inputs disagree with the parameters)"}


class CRowsError(CKernelError):
    """The row runner refused a program or its parameters (the code is in `code`)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class _PoolParams(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in (
        "in_h", "in_w", "channels", "out_h", "out_w", "k_h", "k_w", "stride_h", "stride_w",
        "pad_top", "pad_left", "act_min", "act_max", "average")]


class _AddParams(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in (
        "input1_offset", "input2_offset", "output_offset", "left_shift", "input1_multiplier",
        "input1_shift", "input2_multiplier", "input2_shift", "output_multiplier",
        "output_shift", "act_min", "act_max")]


class _MulParams(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in (
        "input1_offset", "input2_offset", "output_offset", "output_multiplier", "output_shift",
        "act_min", "act_max")]


_READ = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32,
                         ctypes.POINTER(ctypes.c_uint8), ctypes.c_int32)
_WRITE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32,
                          ctypes.POINTER(ctypes.c_uint8), ctypes.c_int32)


class _GroupIO(ctypes.Structure):
    _fields_ = [("ctx", ctypes.c_void_p), ("read", _READ), ("write", _WRITE)]


_LIB: ctypes.CDLL | None = None


def library() -> ctypes.CDLL:
    global _LIB
    if _LIB is not None:
        return _LIB
    lib = ctypes.CDLL(str(ckernels.build_shared(SOURCES, HEADERS, "crows", "tprows")))
    vp, i32 = ctypes.c_void_p, ctypes.c_int32
    lib.tp_group_run.argtypes = [vp, i32, vp, ctypes.POINTER(_GroupIO), vp]
    lib.tp_group_check.argtypes = [vp, i32]
    lib.tp_conv_row.argtypes = [ctypes.POINTER(ckernels._ConvParams), vp, i32, i32, vp]
    lib.tp_transpose_conv_row.argtypes = [ctypes.POINTER(ckernels._TconvParams), vp, i32, i32,
                                          vp]
    lib.tp_pool_row.argtypes = [ctypes.POINTER(_PoolParams), vp, i32, i32, vp]
    lib.tp_add_row.argtypes = [ctypes.POINTER(_AddParams), vp, vp, i32, vp]
    lib.tp_mul_row.argtypes = [ctypes.POINTER(_MulParams), vp, vp, i32, vp]
    lib.tp_concat_row.argtypes = [vp, vp, ctypes.c_int32, i32, vp]
    lib.tp_same_padding.argtypes = [i32] * 5
    lib.tp_same_padding.restype = i32
    lib.tp_tconv_padding.argtypes = [i32] * 3 + [ctypes.c_int]
    lib.tp_tconv_padding.restype = i32
    _LIB = lib
    return lib


def available() -> str | None:
    """None when the runner builds and loads here, else why not (one line)."""
    return ckernels.why_unavailable(library)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise CRowsError(f"{what} returned {ERRORS.get(rc, rc)}", rc)


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


# -- the group runner ------------------------------------------------------------------

ReadRows = Callable[[int, int], bytes]
WriteRows = Callable[[int, bytes], None]


def check_program(program: np.ndarray) -> int:
    """tp_group_check's code for a program (0 when it is well formed)."""
    prog = np.ascontiguousarray(program, dtype=np.int32)
    return int(library().tp_group_check(_ptr(prog), int(prog.size)))


def check_buffers(program: np.ndarray, bases: Sequence[np.ndarray]) -> None:
    """What the C runner cannot check: one contiguous buffer per view, each at least its
    rows_held * row_bytes, writable where the group writes (outputs, rings, lines)."""
    from backends.c.group_program import views_of, written_views

    views = views_of(program)
    if len(bases) != len(views):
        raise CKernelError(f"group program has {len(views)} views, {len(bases)} buffers given")
    written = written_views(program)
    for v, (view, b) in enumerate(zip(views, bases, strict=True)):
        if not (isinstance(b, np.ndarray) and b.flags.c_contiguous):
            raise CKernelError(f"group view {v}: the buffer must be a contiguous numpy array")
        if b.nbytes < view.rows_held * view.row_bytes:
            raise CKernelError(f"group view {v}: buffer of {b.nbytes} B, the view holds "
                               f"{view.rows_held} rows of {view.row_bytes} B")
        if v in written and not b.flags.writeable:
            raise CKernelError(f"group view {v}: the group writes it, the buffer is read-only")


def group_return_code(program: np.ndarray, bases: Sequence[np.ndarray],
                      read: ReadRows | None = None, write: WriteRows | None = None,
                      poison: int | None = None, check: bool = True) -> int:
    """tp_group_run's return code (run_group raises on a nonzero one). check=False skips
    check_buffers (to test the C validation itself on malformed programs)."""
    lib = library()
    prog = np.ascontiguousarray(program, dtype=np.int32)
    if check and check_program(prog) == 0:
        check_buffers(prog, bases)
    ptrs = (ctypes.c_void_p * max(1, len(bases)))(*(_ptr(b) for b in bases))
    failure: list[BaseException] = []

    def do_read(_ctx, address, dst, nbytes):
        try:
            data = bytes(read(int(address), int(nbytes))) if read else b""
            if len(data) != nbytes:
                raise CKernelError(f"stream-in read at {address} gave {len(data)} of "
                                   f"{nbytes} bytes")
            ctypes.memmove(dst, data, nbytes)
            return 0
        except BaseException as exc:  # noqa: BLE001 - re-raised after the C call returns
            failure.append(exc)
            return -1

    def do_write(_ctx, address, src, nbytes):
        try:
            write(int(address), ctypes.string_at(src, nbytes))
            return 0
        except BaseException as exc:  # noqa: BLE001 - re-raised after the C call returns
            failure.append(exc)
            return -1

    io = _GroupIO(None, _READ(do_read) if read else _READ(), _WRITE(do_write) if write
                  else _WRITE())
    p = None if poison is None else ctypes.byref(ctypes.c_uint8(int(poison) & 0xFF))
    rc = int(lib.tp_group_run(_ptr(prog), int(prog.size), ptrs, ctypes.byref(io), p))
    if failure:
        raise failure[0]
    return rc


def run_group(program: np.ndarray, bases: Sequence[np.ndarray], read: ReadRows | None = None,
              write: WriteRows | None = None, poison: int | None = None) -> None:
    """Run a group program (tp_group_run). bases[v]: the buffer of view v as a writable
    contiguous numpy array (the group op's inputs, outputs, rings). read(address, nbytes)
    -> bytes serves stream_in rows, write(address, data) takes spill_rows rows; poison: a
    byte written over each recycled ring/line slot, or None. CRowsError on a refusal."""
    _check(group_return_code(program, bases, read, write, poison), "tp_group_run")


# -- one-row kernels (for tests) ----------------------------------------------------------

def same_padding(size: int, out: int, k: int, stride: int) -> int:
    return int(library().tp_same_padding(size, out, k, stride, 1))


def tconv_padding(out: int, k: int, stride: int, same: bool) -> int:
    return int(library().tp_tconv_padding(out, k, stride, int(same)))


def _ring(ring: np.ndarray) -> np.ndarray:
    ring = np.ascontiguousarray(ring)
    if ring.ndim != 2:
        raise CKernelError("a row view is a [rows_held, row_bytes] array")
    return ring


def conv_row(ring: np.ndarray, oy: int, filt: np.ndarray, bias: np.ndarray | None,
             multiplier: np.ndarray, shift: np.ndarray, *, in_shape: Sequence[int],
             out_shape: Sequence[int], strides: Sequence[int], pads: Sequence[int],
             input_zero_point: int, output_zero_point: int, act_range: tuple[int, int],
             depthwise: bool = False) -> np.ndarray:
    """Output row oy of CONV_2D / DEPTHWISE_CONV_2D (tp_conv_row); input row y in
    ring[y % len(ring)]."""
    ring = _ring(ring)
    p = ckernels._ConvParams()
    p.in_h, p.in_w, p.in_c = (int(d) for d in in_shape[1:4])
    p.out_h, p.out_w, p.out_c = (int(d) for d in out_shape[1:4])
    filt = np.ascontiguousarray(filt, dtype=np.int8)
    p.k_h, p.k_w = int(filt.shape[1]), int(filt.shape[2])
    p.stride_h, p.stride_w = (int(s) for s in strides)
    p.dilation_h = p.dilation_w = 1
    p.pad_top, p.pad_left = (int(v) for v in pads)
    p.input_offset, p.output_offset = -int(input_zero_point), int(output_zero_point)
    p.act_min, p.act_max = (int(v) for v in act_range)
    keep = ckernels._set_weights(p, filt, bias, multiplier, shift)  # noqa: F841
    p.filter_in_c = 0 if depthwise else int(filt.shape[3])
    p.depthwise = int(depthwise)
    out = np.empty(p.out_w * p.out_c, dtype=np.int8)
    _check(library().tp_conv_row(ctypes.byref(p), _ptr(ring), len(ring), int(oy), _ptr(out)),
           "tp_conv_row")
    return out


def transpose_conv_row(ring: np.ndarray, oy: int, filt: np.ndarray, bias: np.ndarray | None,
                       multiplier: np.ndarray, shift: np.ndarray, *, in_shape: Sequence[int],
                       out_shape: Sequence[int], strides: Sequence[int], pads: Sequence[int],
                       input_zero_point: int, output_zero_point: int,
                       act_range: tuple[int, int]) -> np.ndarray:
    """Output row oy of int8 TRANSPOSE_CONV (tp_transpose_conv_row)."""
    ring = _ring(ring)
    p = ckernels._TconvParams()
    p.batches = 1
    p.in_h, p.in_w, p.in_c = (int(d) for d in in_shape[1:4])
    p.out_h, p.out_w, p.out_c = (int(d) for d in out_shape[1:4])
    filt = np.ascontiguousarray(filt, dtype=np.int8)
    p.k_h, p.k_w = int(filt.shape[1]), int(filt.shape[2])
    p.stride_h, p.stride_w = (int(s) for s in strides)
    p.pad_top, p.pad_left = (int(v) for v in pads)
    p.input_offset, p.output_offset = -int(input_zero_point), int(output_zero_point)
    p.act_min, p.act_max = (int(v) for v in act_range)
    keep = ckernels._set_weights(p, filt, bias, multiplier, shift)  # noqa: F841
    out = np.empty(p.out_w * p.out_c, dtype=np.int8)
    _check(library().tp_transpose_conv_row(ctypes.byref(p), _ptr(ring), len(ring), int(oy),
                                           _ptr(out)), "tp_transpose_conv_row")
    return out


def pool_row(ring: np.ndarray, oy: int, *, in_shape: Sequence[int], out_shape: Sequence[int],
             kernel: Sequence[int], strides: Sequence[int], pads: Sequence[int],
             act_range: tuple[int, int], average: bool) -> np.ndarray:
    """Output row oy of MAX_POOL_2D / AVERAGE_POOL_2D (tp_pool_row)."""
    ring = _ring(ring)
    p = _PoolParams()
    p.in_h, p.in_w, p.channels = (int(d) for d in in_shape[1:4])
    p.out_h, p.out_w = int(out_shape[1]), int(out_shape[2])
    p.k_h, p.k_w = (int(k) for k in kernel)
    p.stride_h, p.stride_w = (int(s) for s in strides)
    p.pad_top, p.pad_left = (int(v) for v in pads)
    p.act_min, p.act_max = (int(v) for v in act_range)
    p.average = int(average)
    out = np.empty(p.out_w * p.channels, dtype=np.int8)
    _check(library().tp_pool_row(ctypes.byref(p), _ptr(ring), len(ring), int(oy), _ptr(out)),
           "tp_pool_row")
    return out


def add_row(a: np.ndarray, b: np.ndarray, params: Sequence[int]) -> np.ndarray:
    """tp_add_row; params in tp_add_params order (as group_program.add_params gives)."""
    a, b = (np.ascontiguousarray(x, dtype=np.int8).ravel() for x in (a, b))
    p = _AddParams(*(int(v) for v in params))
    out = np.empty_like(a)
    _check(library().tp_add_row(ctypes.byref(p), _ptr(a), _ptr(b), a.size, _ptr(out)),
           "tp_add_row")
    return out


def mul_row(a: np.ndarray, b: np.ndarray, params: Sequence[int]) -> np.ndarray:
    """tp_mul_row; params in tp_mul_params order (as group_program.mul_params gives)."""
    a, b = (np.ascontiguousarray(x, dtype=np.int8).ravel() for x in (a, b))
    p = _MulParams(*(int(v) for v in params))
    out = np.empty_like(a)
    _check(library().tp_mul_row(ctypes.byref(p), _ptr(a), _ptr(b), a.size, _ptr(out)),
           "tp_mul_row")
    return out


def concat_row(rows: Sequence[np.ndarray], width: int) -> np.ndarray:
    """tp_concat_row: the channel concatenation of one row of `width` pixels."""
    arrays = [np.ascontiguousarray(r, dtype=np.int8).ravel() for r in rows]
    channels = np.array([a.size // width for a in arrays], dtype=np.int32)
    ptrs = (ctypes.c_void_p * len(arrays))(*(_ptr(a) for a in arrays))
    out = np.empty(int(channels.sum()) * width, dtype=np.int8)
    _check(library().tp_concat_row(ptrs, _ptr(channels), len(arrays), int(width), _ptr(out)),
           "tp_concat_row")
    return out
