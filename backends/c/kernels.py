"""The project's own C kernels (backends/c/tp_kernels.c) on numpy arrays, through ctypes.

The executor runs the fused and scratch-free ops of a plan through these, so `planner run`
proves the code a device runs, not a Python stand-in. The shared library is built with the
system C compiler at first use and cached in a directory keyed by the hash of the sources
(`$TINYPLAN_CACHE` or `~/.cache/tinyplan`), so an edited kernel is rebuilt, never stale.

Everything here is int8 NHWC, batch 1 for the convolutions (the shapes TFLM plans), except
`fused_concat`, which is dtype- and axis-agnostic like its C kernel.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from planner.errors import PlannerError

C_DIR = Path(__file__).resolve().parent  # the C sources sit beside this module


class CKernelError(PlannerError):
    """The C kernels cannot be built or refused their parameters."""


# tp_kernels.c reads slices through tp_runtime.c, which decodes streams with tp_compress.c.
SOURCES = ("tp_kernels.c", "tp_runtime.c", "tp_compress.c")
HEADERS = ("tp_kernels.h", "tp_runtime.h", "tp_compress.h", "tp_storage.h", "tp_async.h")


def _define(name: str, header: str = "tp_kernels.h") -> int:
    """A numeric #define of a kernel header: the limits have one source, the C code."""
    m = re.search(rf"#define\s+{name}\s+(\d+)", (C_DIR / header).read_text())
    if m is None:
        raise CKernelError(f"{header} defines no {name}")
    return int(m.group(1))


MAX_SLICES = _define("TP_MAX_SLICES")  # slices (concat inputs or parts) per fused op
MAX_KERNEL_H = _define("TP_MAX_KERNEL_H")  # kernel rows of a fused conv

TP_OK, TP_EPLAN, TP_ECONFIG = 0, -4, -5
_ERRORS = {TP_EPLAN: "TP_EPLAN (inputs disagree with the parameters)",
           TP_ECONFIG: "TP_ECONFIG (unsupported parameters)"}


class _ConvParams(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in (
        "in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "k_h", "k_w", "stride_h",
        "stride_w", "dilation_h", "dilation_w", "pad_top", "pad_left", "input_offset",
        "output_offset", "act_min", "act_max")] + [
        ("filter", ctypes.c_void_p), ("bias", ctypes.c_void_p),
        ("out_multiplier", ctypes.c_void_p), ("out_shift", ctypes.c_void_p),
        ("filter_in_c", ctypes.c_int32), ("depthwise", ctypes.c_int32)]


class _TconvParams(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in (
        "batches", "in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "k_h", "k_w",
        "stride_h", "stride_w", "pad_top", "pad_left", "input_offset", "output_offset",
        "act_min", "act_max")] + [
        ("filter", ctypes.c_void_p), ("bias", ctypes.c_void_p),
        ("out_multiplier", ctypes.c_void_p), ("out_shift", ctypes.c_void_p)]


class _Slice(ctypes.Structure):
    _fields_ = [("channels", ctypes.c_uint32), ("data", ctypes.c_void_p),
                ("pixel_stride", ctypes.c_uint32), ("stream", ctypes.c_void_p)]


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _cache_dir() -> Path:
    root = os.environ.get("TINYPLAN_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "tinyplan"


def source_hash(sources: Sequence[str] = SOURCES, headers: Sequence[str] = HEADERS) -> str:
    h = hashlib.sha256()
    for name in (*sources, *headers):
        h.update(name.encode())
        h.update((C_DIR / name).read_bytes())
    return h.hexdigest()[:16]


_LIB: ctypes.CDLL | None = None


def build_shared(sources: Sequence[str], headers: Sequence[str], name: str,
                 libname: str) -> Path:
    """The shared library of these C sources (backends/c), built once per source hash in
    the cache (a build that fails is one CKernelError line)."""
    target = _cache_dir() / name / source_hash(sources, headers) / f"lib{libname}.so"
    if target.is_file():
        return target
    cc = _compiler()
    if cc is None:
        raise CKernelError("no C compiler (cc, gcc or clang; or set CC): the project's C "
                           "kernels cannot be built to run the fused ops")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent first uses never load half a file.
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
        partial = Path(tmp.name)
    cmd = [cc, "-std=c99", "-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-I", str(C_DIR),
           "-o", str(partial), *(str(C_DIR / s) for s in sources)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        first = next((ln for ln in done.stderr.splitlines() if "error" in ln), done.stderr)
        raise CKernelError(f"building the C kernels with {cc} failed: {first.strip()}")
    os.replace(partial, target)
    return target


def library() -> ctypes.CDLL:
    """The built kernels (built once per source hash, then loaded from the cache)."""
    global _LIB
    if _LIB is not None:
        return _LIB
    target = build_shared(SOURCES, HEADERS, "ckernels", "tpkernels")
    lib = ctypes.CDLL(str(target))
    lib.tp_fused_concat_conv2d.argtypes = [ctypes.c_void_p, ctypes.POINTER(_ConvParams),
                                           ctypes.POINTER(_Slice), ctypes.c_int, ctypes.c_void_p]
    lib.tp_fused_concat.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Slice), ctypes.c_int,
                                    ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p]
    lib.tp_transpose_conv_rows.argtypes = [ctypes.POINTER(_TconvParams), ctypes.c_void_p,
                                           ctypes.c_void_p, ctypes.c_void_p]
    lib.tp_transpose_conv_rows_s16.argtypes = [ctypes.POINTER(_TconvParams), ctypes.c_void_p,
                                               ctypes.c_void_p, ctypes.c_void_p,
                                               ctypes.c_void_p]
    lib.tp_tconv_padding.argtypes = [ctypes.c_int32] * 3 + [ctypes.c_int]
    lib.tp_tconv_padding.restype = ctypes.c_int32
    lib.tp_same_padding.argtypes = [ctypes.c_int32] * 5
    lib.tp_same_padding.restype = ctypes.c_int32
    _LIB = lib
    return lib


def why_unavailable(load: Callable[[], object]) -> str | None:
    """None when `load` (a library() function) builds and loads, else why not (one line)."""
    try:
        load()
    except CKernelError as exc:
        return str(exc)
    return None


def available() -> str | None:
    """None when the kernels build and load here, else why not (one line)."""
    return why_unavailable(library)


def _check(rc: int, what: str) -> None:
    if rc != TP_OK:
        raise CKernelError(f"C kernel {what} returned {_ERRORS.get(rc, rc)}")


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


# -- TFLite's quantization arithmetic (what the TFLM Prepare functions compute) ---------

def quantize_multiplier(m: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: (Q31 multiplier, shift > 0 = left)."""
    if m == 0:
        return 0, 0
    q, shift = math.frexp(m)
    # std::round: halves away from zero (Python's round() would round them to even).
    # q * 2**31 and + 0.5 are exact in a double.
    fixed = int(math.copysign(math.floor(abs(q) * (1 << 31) + 0.5), q))
    if fixed == 1 << 31:
        fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return fixed, shift


def per_channel_multipliers(input_scale: float, filter_scales: Sequence[float],
                            output_scale: float, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """PopulateConvolutionQuantizationParams: double(in) * double(filter) / double(out)."""
    ins, outs = float(np.float32(input_scale)), float(np.float32(output_scale))
    pairs = [quantize_multiplier(ins * float(np.float32(filter_scales[c if len(filter_scales) > 1
                                                                     else 0])) / outs)
             for c in range(channels)]
    mult = np.array([p[0] for p in pairs], dtype=np.int32)
    shift = np.array([p[1] for p in pairs], dtype=np.int32)
    return mult, shift


def activation_range(activation: str, scale: float, zero_point: int,
                     dtype: str = "int8") -> tuple[int, int]:
    """CalculateActivationRangeQuantized for int8 (or int16) outputs."""
    lo, hi = (-32768, 32767) if dtype == "int16" else (-128, 127)

    def q(f: float) -> int:
        v = float(np.float32(f) / np.float32(scale))
        return zero_point + int(math.copysign(math.floor(abs(v) + 0.5), v))

    if activation in ("none", None):
        return lo, hi
    if activation == "relu":
        return max(lo, q(0.0)), hi
    if activation == "relu6":
        return max(lo, q(0.0)), min(hi, q(6.0))
    if activation == "relu_n1_to_1":
        return max(lo, q(-1.0)), min(hi, q(1.0))
    raise CKernelError(f"fused activation '{activation}' is not supported by the C kernels")


# -- the kernels ----------------------------------------------------------------------

def _set_weights(p: _ConvParams | _TconvParams, filt: np.ndarray, bias: np.ndarray | None,
                 multiplier: np.ndarray, shift: np.ndarray) -> list[np.ndarray | None]:
    """Point the parameter struct at int32/int8 copies; the caller keeps them alive."""
    arrays = [filt, None if bias is None else np.ascontiguousarray(bias, dtype=np.int32),
              np.ascontiguousarray(multiplier, dtype=np.int32),
              np.ascontiguousarray(shift, dtype=np.int32)]
    p.filter, p.bias, p.out_multiplier, p.out_shift = (_ptr(a) for a in arrays)
    return arrays


def _int8_nhwc(a: np.ndarray, what: str) -> np.ndarray:
    a = np.ascontiguousarray(a)
    if a.dtype != np.int8 or a.ndim != 4 or a.shape[0] != 1:
        raise CKernelError(f"{what}: the C kernels take int8 NHWC batch-1 arrays, "
                           f"got {a.dtype} {list(a.shape)}")
    return a


def fused_concat_conv2d(slices: Sequence[np.ndarray], filt: np.ndarray, bias: np.ndarray | None,
                        multiplier: np.ndarray, shift: np.ndarray, *, input_zero_point: int,
                        output_zero_point: int, out_shape: Sequence[int],
                        strides: Sequence[int] = (1, 1), dilations: Sequence[int] = (1, 1),
                        padding: str = "same", act_range: tuple[int, int] = (-128, 127),
                        depthwise: bool = False) -> np.ndarray:
    """CONV_2D (grouped when the filter has fewer input channels) or DEPTHWISE_CONV_2D over
    the channel concatenation of `slices` (each [1, H, W, c_i]), never materialised."""
    lib = library()
    arrays = [_int8_nhwc(s, "slice") for s in slices]
    if not arrays or len(arrays) > MAX_SLICES:
        raise CKernelError(f"{len(arrays)} slices: the fused kernel takes 1..{MAX_SLICES}")
    h, w = arrays[0].shape[1:3]
    if any(a.shape[1:3] != (h, w) for a in arrays):
        raise CKernelError("slices differ in height or width")
    filt = np.ascontiguousarray(filt, dtype=np.int8)
    k_h, k_w = int(filt.shape[1]), int(filt.shape[2])
    if k_h > MAX_KERNEL_H:
        raise CKernelError(f"kernel height {k_h} exceeds TP_MAX_KERNEL_H ({MAX_KERNEL_H})")
    out_h, out_w, out_c = (int(d) for d in out_shape[1:4])
    p = _ConvParams()
    p.in_h, p.in_w, p.in_c = int(h), int(w), sum(int(a.shape[3]) for a in arrays)
    p.out_h, p.out_w, p.out_c = out_h, out_w, out_c
    p.k_h, p.k_w = k_h, k_w
    p.stride_h, p.stride_w = (int(s) for s in strides)
    p.dilation_h, p.dilation_w = (int(d) for d in dilations)
    if padding == "same":
        p.pad_top = lib.tp_same_padding(p.in_h, out_h, k_h, p.stride_h, p.dilation_h)
        p.pad_left = lib.tp_same_padding(p.in_w, out_w, k_w, p.stride_w, p.dilation_w)
    elif padding != "valid":
        raise CKernelError(f"padding '{padding}' is not supported by the C kernels")
    p.input_offset, p.output_offset = -int(input_zero_point), int(output_zero_point)
    p.act_min, p.act_max = (int(v) for v in act_range)
    keep = _set_weights(p, filt, bias, multiplier, shift)  # noqa: F841 - alive for the call
    p.filter_in_c = 0 if depthwise else int(filt.shape[3])
    p.depthwise = int(depthwise)
    cs = (_Slice * len(arrays))()
    for i, a in enumerate(arrays):
        cs[i].channels = cs[i].pixel_stride = int(a.shape[3])
        cs[i].data, cs[i].stream = _ptr(a), None
    out = np.empty((1, out_h, out_w, out_c), dtype=np.int8)
    _check(lib.tp_fused_concat_conv2d(None, ctypes.byref(p), cs, len(arrays), _ptr(out)),
           "tp_fused_concat_conv2d")
    return out


def fused_concat(slices: Sequence[np.ndarray], axis: int) -> np.ndarray:
    """Concatenation on `axis` through tp_fused_concat's byte geometry (any dtype)."""
    lib = library()
    arrays = [np.ascontiguousarray(s) for s in slices]
    if not arrays or len(arrays) > MAX_SLICES:
        raise CKernelError(f"{len(arrays)} slices: the fused kernel takes 1..{MAX_SLICES}")
    first = arrays[0]
    axis = axis + first.ndim if axis < 0 else axis
    if any(a.dtype != first.dtype or a.ndim != first.ndim or
           a.shape[:axis] != first.shape[:axis] or a.shape[axis + 1:] != first.shape[axis + 1:]
           for a in arrays):
        raise CKernelError("concat slices differ in dtype or in a dimension off the axis")
    outer = math.prod(first.shape[:axis])
    inner = math.prod(first.shape[axis + 1:]) * first.dtype.itemsize
    shape = list(first.shape)
    shape[axis] = sum(int(a.shape[axis]) for a in arrays)
    out = np.empty(shape, dtype=first.dtype)
    cs = (_Slice * len(arrays))()
    for i, a in enumerate(arrays):
        cs[i].channels = cs[i].pixel_stride = int(a.shape[axis])
        cs[i].data, cs[i].stream = _ptr(a), None
    _check(lib.tp_fused_concat(None, cs, len(arrays), outer, inner, _ptr(out)),
           "tp_fused_concat")
    return out


def tconv_scratch_bytes(out_shape: Sequence[int], dtype: str = "int8") -> int:
    """The scratch-free TRANSPOSE_CONV's accumulators of one output row: int32 for int8
    activations, int64 for int16 (16x8)."""
    return int(out_shape[2]) * int(out_shape[3]) * (8 if dtype == "int16" else 4)


def transpose_conv(x: np.ndarray, filt: np.ndarray, bias: np.ndarray | None,
                   multiplier: np.ndarray, shift: np.ndarray, *, input_zero_point: int,
                   output_zero_point: int, out_shape: Sequence[int],
                   strides: Sequence[int] = (1, 1), padding: str = "valid",
                   act_range: tuple[int, int] = (-128, 127),
                   row_acc: np.ndarray | None = None) -> np.ndarray:
    """TRANSPOSE_CONV through tp_transpose_conv_rows (int8) or tp_transpose_conv_rows_s16
    (int16 activations, zero points 0, int64 bias). `row_acc`, if given, is the scratch the
    kernel accumulates in (at least tconv_scratch_bytes, e.g. the plan's scratch segment
    in an arena); else a private one."""
    lib = library()
    x = np.ascontiguousarray(x)
    if x.dtype not in (np.int8, np.int16) or x.ndim != 4:
        raise CKernelError(f"transpose conv input: int8 or int16 NHWC expected, got {x.dtype} "
                           f"{list(x.shape)}")
    s16 = x.dtype == np.int16
    if s16 and (input_zero_point or output_zero_point):
        raise CKernelError("16x8 transpose conv needs zero points 0 (as TFLite's)")
    filt = np.ascontiguousarray(filt, dtype=np.int8)
    n, out_h, out_w, out_c = (int(d) for d in out_shape)
    if padding not in ("same", "valid"):
        raise CKernelError(f"padding '{padding}' is not supported by the C kernels")
    if n != x.shape[0] or int(filt.shape[0]) != out_c or int(filt.shape[3]) != x.shape[3]:
        raise CKernelError(f"transpose conv shapes disagree: input {list(x.shape)}, filter "
                           f"{list(filt.shape)}, output {list(out_shape)}")
    p = _TconvParams()
    p.batches = n
    p.in_h, p.in_w, p.in_c = (int(d) for d in x.shape[1:4])
    p.out_h, p.out_w, p.out_c = out_h, out_w, out_c
    p.k_h, p.k_w = int(filt.shape[1]), int(filt.shape[2])
    p.stride_h, p.stride_w = (int(s) for s in strides)
    same = int(padding == "same")
    p.pad_top = lib.tp_tconv_padding(out_h, p.k_h, p.stride_h, same)
    p.pad_left = lib.tp_tconv_padding(out_w, p.k_w, p.stride_w, same)
    p.input_offset, p.output_offset = -int(input_zero_point), int(output_zero_point)
    p.act_min, p.act_max = (int(v) for v in act_range)
    keep = _set_weights(p, filt, None if s16 else bias, multiplier, shift)  # noqa: F841
    bias64 = None if bias is None or not s16 else np.ascontiguousarray(bias, dtype=np.int64)
    need = tconv_scratch_bytes(out_shape, "int16" if s16 else "int8")
    if row_acc is None:
        row_acc = np.empty(need, dtype=np.uint8)
    if not row_acc.flags.c_contiguous or row_acc.nbytes < need:
        raise CKernelError(f"transpose conv row accumulator has {row_acc.nbytes} B, "
                           f"needs {need} B contiguous")
    out = np.empty((n, out_h, out_w, out_c), dtype=x.dtype)
    if s16:
        _check(lib.tp_transpose_conv_rows_s16(ctypes.byref(p), _ptr(bias64), _ptr(x),
                                              _ptr(row_acc), _ptr(out)),
               "tp_transpose_conv_rows_s16")
    else:
        _check(lib.tp_transpose_conv_rows(ctypes.byref(p), _ptr(x), _ptr(row_acc), _ptr(out)),
               "tp_transpose_conv_rows")
    return out
