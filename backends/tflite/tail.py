"""Predict the tail of TFLM's arena for a .tflite model: its persistent allocations.

TFLM's arena is a head (the planned buffers, what the planner changes) and a tail that
grows down from the arena's end: the allocator objects, one `TfLiteEvalTensor` per
tensor, one `NodeAndRegistration` per op, each op's parsed builtin options, each
kernel's `OpData` (Init) and its per-channel arrays (Prepare), scratch-buffer handles,
variable tensors, and the `TfLiteTensor`s of the graph inputs and outputs with their
quantization. This module lists those allocations in TFLM's order, with TFLM's size and
alignment for each, and replays the downward bump allocator
(`SingleArenaBufferAllocator::AllocatePersistentBuffer`: `AlignPointerDown(tail -
size, alignment)`) over them.

Sizes are those of the 64-bit host build the `tflite-micro` wheel pinned in
pyproject.toml runs (reference kernels, `TF_LITE_STATIC_MEMORY`,
`USE_TFLM_COMPRESSION`). They come from compiling `sizeof`/`alignof` against the TFLM
source of commit 90b983c2b and were checked against that wheel's `print_allocations()`
on every runnable shared and zoo model (tests/test_arena_tail.py); one value differs
from that source and is marked. The custom ops' sizes are the project's own C structs
(backends/c/tflm_ops.cc, tp_runtime.h); a test recompiles them with the host compiler.

`load_arena` adds what AllocateTensors holds in the head only while it loads the model
(temporary tensors, the planner's working data): on models with a small head the arena
an application must pass is larger than head + tail.

The walk is driven by the model bytes alone, so it follows whatever the rewrite emits;
an op or dtype path without a rule raises `TailUnknown` rather than guess.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backends.tflite.io import read_model, read_offline_offsets, schema
from planner.errors import PlannerError

ARENA_ALIGN = 16  # MicroArenaBufferAlignment(): what AllocatePersistentBuffer(bytes) uses

# Framework structs, (sizeof, alignof) on the 64-bit host (micro_allocator.h, common.h).
EVAL_TENSOR = (24, 8)  # TfLiteEvalTensor: data, dims, type
NODE_AND_REGISTRATION = (64, 8)  # TfLiteNode (7 words under TF_LITE_STATIC_MEMORY) + pointer
TFLITE_TENSOR = (64, 8)  # TfLiteTensor (TF_LITE_STATIC_MEMORY)
AFFINE_QUANTIZATION = (24, 8)  # TfLiteAffineQuantization: scale*, zero_point*, dimension
SUBGRAPH_ALLOCATIONS = (24, 8)  # SubgraphAllocations: node_and_registrations*, tensors*, compressed
BUILTIN_DATA_ALLOCATOR = (16, 8)  # MicroBuiltinDataAllocator: vtable + allocator pointer
SCRATCH_HANDLE = (8, 8)  # ScratchBufferHandle: data pointer
POINTER = 8

# The allocator objects TFLM places at the very end of the arena, in creation order.
# "recording" is what the Python wheel builds (RecordingMicroAllocator::Create) and what
# print_allocations() reports; "application" is MicroInterpreter(model, resolver, arena,
# size) -> MicroAllocator::Create (SingleArenaBufferAllocator, GreedyMemoryPlanner,
# MicroAllocator): 232 B less, from the same source, not measurable through the wheel.
PREAMBLES: dict[str, tuple[tuple[str, int, int], ...]] = {
    "recording": (("RecordingSingleArenaBufferAllocator", 104, 8),
                  ("GreedyMemoryPlanner", 72, 8),
                  ("RecordingMicroAllocator", 272, 8)),
    "application": (("SingleArenaBufferAllocator", 72, 8),
                    ("GreedyMemoryPlanner", 72, 8),
                    ("MicroAllocator", 72, 8)),
}


class TailUnknown(PlannerError):
    """The model has an op (or dtype path) whose persistent allocations are not modelled."""


@dataclass(frozen=True)
class Alloc:
    kind: str  # allocator, eval tensors, nodes, builtin data, op data, ... (for reports)
    what: str  # which struct or array, for the curious reader
    size: int
    align: int


@dataclass(frozen=True)
class TailPrediction:
    bytes: int
    allocations: tuple[Alloc, ...]

    def by_kind(self) -> dict[str, int]:
        """Bytes per kind, each allocation charged its size plus its alignment padding."""
        out: dict[str, int] = {}
        for a, used in zip(self.allocations, _used(self.allocations), strict=True):
            kind = a.kind
            out[kind] = out.get(kind, 0) + used
        return out


# -- what one op allocates ----------------------------------------------------------------

class OpView:
    """The tensors of one operator, read from the model (dtype names, shapes, quantization)."""

    def __init__(self, fb: Any, model: Any, sg: Any, op: Any, name: str) -> None:
        self._fb, self._model, self._sg, self._op, self.name = fb, model, sg, op, name
        self._types = {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}

    def _tensor(self, group: Any, pos: int) -> Any | None:
        group = list(group) if group is not None else []
        if pos < 0 or pos >= len(group) or group[pos] < 0:
            return None
        return self._sg.tensors[group[pos]]

    def input(self, pos: int) -> Any | None:
        return self._tensor(self._op.inputs, pos)

    def output(self, pos: int) -> Any | None:
        return self._tensor(self._op.outputs, pos)

    @property
    def num_inputs(self) -> int:
        return len(self._op.inputs) if self._op.inputs is not None else 0

    def dtype(self, t: Any | None) -> str:
        return self._types.get(t.type, "?") if t is not None else "none"

    @staticmethod
    def dim(t: Any | None, axis: int) -> int:
        shape = list(t.shape) if t is not None and t.shape is not None else []
        if not -len(shape) <= axis < len(shape):
            raise TailUnknown(f"tensor {_tname(t)} has no dimension {axis}")
        return int(shape[axis])

    @staticmethod
    def channel_scales(t: Any | None) -> int:
        q = t.quantization if t is not None else None
        return len(q.scale) if q is not None and q.scale is not None else 0

    def fail(self, why: str) -> TailUnknown:
        return TailUnknown(f"no tail model for {self.name} with {why}")


def _tname(t: Any | None) -> str:
    raw = getattr(t, "name", None)
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _int32s(n: int) -> int:
    return 4 * n


@dataclass(frozen=True)
class Kernel:
    """One kernel's persistent allocations (all but `params` go through
    context->AllocatePersistentBuffer, so they are 16-byte aligned).

    params: the builtin-options struct the op's parser allocates (size, align), None if
        the parser allocates nothing (and for every custom op).
    init: sizes allocated in Init (the OpData), in order.
    prepare: sizes allocated in Prepare (per-channel multiplier/shift arrays...).
    scratch: how many RequestScratchBufferInArena calls Prepare makes (each costs a
        ScratchBufferHandle in the tail; the buffers themselves are in the head).
    temps: the temporary TfLiteTensors Prepare reads, in order ("i1": input 1, "o0":
        output 0; an absent optional input allocates nothing); None: every input, then
        every output. Only the arena needed while loading depends on them.
    """

    params: tuple[int, int] | None = None
    init: tuple[int, ...] = ()
    prepare: Callable[[OpView], list[int]] = field(default=lambda op: [])
    scratch: Callable[[OpView], int] = field(default=lambda op: 0)
    temps: tuple[str, ...] | None = None


def _int8_only(dtypes: Sequence[str]) -> Callable[[OpView], list[int]]:
    def check(op: OpView) -> list[int]:
        dt = op.dtype(op.input(0))
        if dt not in dtypes:
            raise op.fail(f"{dt} input")
        return []
    return check


def _per_channel(filter_pos: int, axis: int) -> Callable[[OpView], list[int]]:
    """Conv-style kernels: int32 multiplier and shift arrays, one entry per filter channel
    on `axis` (conv_common.cc, depthwise_conv_common.cc, transpose_conv.cc), whatever the
    dtype: they are allocated before the type checks."""
    def prepare(op: OpView) -> list[int]:
        _measured_input(op, op.input(2 if op.name == "TRANSPOSE_CONV" else 0))
        n = op.dim(op.input(filter_pos), axis)
        return [_int32s(n), _int32s(n)]
    return prepare


def _measured_input(op: OpView, t: Any | None) -> None:
    """The weighted kernels' paths checked against the wheel: int8 and float32 inputs."""
    dt = op.dtype(t)
    if dt not in ("INT8", "FLOAT32"):
        raise op.fail(f"{dt} input")


def _int4_unpack_scratch(op: OpView) -> int:
    # Packed int4 weights are unpacked into one scratch buffer before the kernel runs.
    return 1 if op.dtype(op.input(1)) == "INT4" else 0


def _fully_connected(op: OpView) -> list[int]:
    # fully_connected_common.cc: the arrays exist only for per-channel int8/int16 filters.
    _measured_input(op, op.input(0))
    if op.dtype(op.input(0)) == "FLOAT32":
        return []
    n = op.channel_scales(op.input(1))
    return [_int32s(n), _int32s(n)] if n > 1 else []


def _transpose_conv_scratch(op: OpView) -> int:
    dt = op.dtype(op.input(2))  # inputs: output_shape, filter, input, [bias]
    if dt == "INT8":
        return 1  # the int32 accumulator (output elements x 4)
    if dt == "FLOAT32":
        return 0
    raise op.fail(f"{dt} input")  # int16 adds a bias-conversion path not measured here


def _svdf_scratch(op: OpView) -> int:
    dt = op.dtype(op.input(0))
    return {"INT8": 2, "FLOAT32": 1}.get(dt) or _raise(op.fail(f"{dt} input"))


def _mean_or_sum_scratch(op: OpView) -> int:
    # input iterator and resolved axes, plus an int32 accumulator for quantized input
    return 3 if op.dtype(op.input(0)) in ("INT8", "INT16") else 2


def _softmax(op: OpView) -> list[int]:
    # softmax_common.cc: only an int16 input allocates its two lookup tables (not measured
    # here); int8 in, int16 out (keyword_scrambled) allocates nothing.
    dt = op.dtype(op.input(0))
    if dt not in ("INT8", "FLOAT32"):
        raise op.fail(f"{dt} input")
    return []


def _raise(exc: Exception) -> Any:
    raise exc


_CONV_PARAMS = (28, 4)  # TfLiteConvParams / TfLiteDepthwiseConvParams
_OP_DATA_CONV = 80  # OpDataConv (conv.h), also used by DEPTHWISE_CONV_2D
# ConvPrepare / DepthwiseConvPrepare read output, input, filter, then CalculateOpData*
# reads input, filter, bias, output again (temporaries are freed only after Prepare).
_CONV_TEMPS = ("o0", "i0", "i1", "i0", "i1", "i2", "o0")

# TFLM reference kernels, by builtin name. OpData sizes are sizeof() of the struct each
# Init allocates (with USE_TFLM_COMPRESSION's extra scratch indices).
BUILTIN_KERNELS: dict[str, Kernel] = {
    "CONV_2D": Kernel(_CONV_PARAMS, (_OP_DATA_CONV,), _per_channel(1, 0),
                      _int4_unpack_scratch, _CONV_TEMPS),
    "DEPTHWISE_CONV_2D": Kernel(_CONV_PARAMS, (_OP_DATA_CONV,), _per_channel(1, 3),
                                _int4_unpack_scratch, _CONV_TEMPS),
    # TfLiteFullyConnectedParams: 16 B (align 4) in the 90b983c2b source, but the wheel
    # allocates 32 B at 8-byte alignment: measured (hello_world's 3 FCs, ad01's 10, and
    # keyword_scrambled, where an FC after an SVDF's 12 B lands on an 8-byte boundary).
    "FULLY_CONNECTED": Kernel((32, 8), (72,), _fully_connected,  # OpDataFullyConnected
                              _int4_unpack_scratch),
    "ADD": Kernel((8, 4), (60,), _int8_only(("INT8", "INT16", "FLOAT32"))),  # OpDataAdd
    "AVERAGE_POOL_2D": Kernel((40, 4), (32,)),  # TfLitePoolParams, OpDataPooling
    "MAX_POOL_2D": Kernel((40, 4), (32,)),
    "CONCATENATION": Kernel((8, 4), (80,)),  # ConcatenationParams + 10 scratch indices
    "RESHAPE": Kernel((36, 4)),  # TfLiteReshapeParams; no Init
    "RESIZE_BILINEAR": Kernel((2, 1)),  # two bools; no Init
    "SOFTMAX": Kernel((4, 4), (80,), _softmax),  # SoftmaxParams
    "SVDF": Kernel((12, 4), (36,), scratch=_svdf_scratch),  # OpDataSvdf
    "QUANTIZE": Kernel(None, (32,)),  # OpDataQuantizeReference; ParseQuantize allocates nothing
    # OpData: ConvParams + 4 buffer indices + 2 pointers; arrays on filter axis 0.
    "TRANSPOSE_CONV": Kernel((20, 4), (88,), _per_channel(1, 0), _transpose_conv_scratch,
                             ("o0", "i2", "i1", "i2", "i1", "i3", "o0")),
    "SPLIT_V": Kernel((4, 4)),  # TfLiteSplitVParams; no Init, no Prepare allocation
    "MUL": Kernel((4, 4), (36,)),  # TfLiteMulParams, OpDataMul
    "RELU": Kernel(None, (28,)),  # ReluOpData
    "RELU6": Kernel(None, (8,)),  # Relu6OpData
    "LOGISTIC": Kernel(None, (16,)),  # OpDataLogistic
    "HARD_SWISH": Kernel(None, (20,)),  # HardSwishParams
    "ARG_MAX": Kernel((4, 4)),  # TfLiteArgMaxParams; no Init
    # TfLiteReducerParams (one bool), OpDataReduce; reduce_common.cc's scratch requests.
    "MEAN": Kernel((1, 1), (44,), scratch=_mean_or_sum_scratch),
    "SUM": Kernel((1, 1), (44,), scratch=_mean_or_sum_scratch),
    "REDUCE_MAX": Kernel((1, 1), (44,), scratch=lambda op: 2),
    "REDUCE_MIN": Kernel((1, 1), (44,), scratch=lambda op: 2),
}


# The project's custom ops (backends/c/tflm_ops.cc), 64-bit host sizes of its C structs;
# tests/test_arena_tail.py recompiles the structs from the source and checks these.
# To add an op: its op-data struct's size here
# (the test compiles every name listed, from a `struct NAME {...};` in tflm_ops.cc or a
# typedef in tp_runtime.h / tp_kernels.h) and a Kernel in CUSTOM_KERNELS: what its Init
# and Prepare allocate, its scratch requests and the tensors Prepare reads.
CUSTOM_STRUCTS: dict[str, int] = {
    "TransferData": 32,  # int32 opts[8] (the async word is a bit of the first)
    "FusedData": 1136,  # header, per-input words, 8 tp_action, conv params, pointers
    "tp_stream_state": 344,  # includes its tp_reader (decompression state)
    "TconvData": 136,  # int32 opts[5], tp_tconv_params, scratch index, 16x8 flag
    "SplitData": 12,  # int32 opts[3]
    # storage, program pointer and counts, two readers (decoders of compressed streams)
    "GroupData": 688,
    "WaitData": 16,  # int32 opts[4]
}
MAX_FUSED_INPUTS = 8  # TP_TFLM_MAX_INPUTS: InitFused allocates one stream state per slot


def _fused_conv(op: OpView) -> list[int]:
    out_c = op.dim(op.output(0), 3)  # PrepareFused: multiplier and shift per output channel
    return [_int32s(out_c), _int32s(out_c)]


CUSTOM_KERNELS: dict[str, Kernel] = {
    # PrepareTransfer and PrepareFusedConcat read no tensors.
    "Spill": Kernel(init=(CUSTOM_STRUCTS["TransferData"],), temps=()),
    "Fetch": Kernel(init=(CUSTOM_STRUCTS["TransferData"],), temps=()),
    "FusedConcat": Kernel(init=(CUSTOM_STRUCTS["FusedData"],
                                CUSTOM_STRUCTS["tp_stream_state"] * MAX_FUSED_INPUTS),
                          temps=()),
    # PrepareFused reads the first resident input, the filter and the output; which input
    # that is depends on the options, so the loading estimate counts every tensor (an
    # upper bound, a few hundred bytes).
    "FusedConcatConv2D": Kernel(init=(CUSTOM_STRUCTS["FusedData"],
                                      CUSTOM_STRUCTS["tp_stream_state"] * MAX_FUSED_INPUTS),
                                prepare=_fused_conv),
    # PrepareTconv: multiplier and shift per output channel, one row of accumulators.
    "TinyPlanTransposeConv": Kernel(init=(CUSTOM_STRUCTS["TconvData"],),
                                    prepare=_fused_conv, scratch=lambda op: 1,
                                    temps=("i2", "i1", "o0", "i0", "i3")),
    "TinyPlanSplit": Kernel(init=(CUSTOM_STRUCTS["SplitData"],), temps=()),
    # InitGroup: GroupData only (the program stays in the model's options); PrepareGroup
    # checks the views against eval tensors, so it allocates no temporaries.
    "TinyPlanStreamedGroup": Kernel(init=(CUSTOM_STRUCTS["GroupData"],), temps=()),
    # PrepareWait reads no tensors.
    "TinyPlanWait": Kernel(init=(CUSTOM_STRUCTS["WaitData"],), temps=()),
}


# -- the walk ------------------------------------------------------------------------------

def _dtype_bytes(fb: Any, t: Any) -> int:
    tt = fb.TensorType
    widths = {tt.FLOAT32: 4, tt.INT32: 4, tt.UINT32: 4, tt.INT16: 2, tt.UINT16: 2,
              tt.FLOAT16: 2, tt.INT64: 8, tt.FLOAT64: 8, tt.UINT64: 8, tt.INT8: 1,
              tt.UINT8: 1, tt.BOOL: 1}
    if t.type not in widths:
        raise TailUnknown(f"no tail model for a variable tensor of type {t.type}")
    return widths[t.type] * math.prod(int(d) for d in (t.shape if t.shape is not None else []))


def _persistent_tensor(fb: Any, t: Any, role: str) -> list[Alloc]:
    """AllocatePersistentTfLiteTensor: the TfLiteTensor and, for a quantized tensor, a
    TfLiteAffineQuantization and a zero-point TfLiteIntArray (size word + one per scale)."""
    out = [Alloc("io tensors", f"TfLiteTensor ({role})", *TFLITE_TENSOR)]
    q = t.quantization
    scales = len(q.scale) if q is not None and q.scale is not None else 0
    zeros = len(q.zeroPoint) if q is not None and q.zeroPoint is not None else 0
    if scales > 0 and zeros > 0:
        out.append(Alloc("io tensors", "TfLiteAffineQuantization", *AFFINE_QUANTIZATION))
        out.append(Alloc("io tensors", "zero points", 4 + 4 * scales, 4))
    return out


def _op_name(fb: Any, model: Any, op: Any) -> tuple[str, bool]:
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == fb.BuiltinOperator.CUSTOM:
        raw = code.customCode
        return (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)), True
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    return names.get(builtin, str(builtin)), False


@dataclass(frozen=True)
class HeadNeed:
    """While TFLM prepares and plans, the head holds temporary data: after the first
    `index` tail allocations it needs `head` bytes from the arena start, below the tail
    rounded up to `tail_align`."""

    index: int
    head: int
    tail_align: int
    what: str


def tail_allocations(model: Any, allocator: str = "recording") -> list[Alloc]:
    """TFLM's persistent allocations for `model` (a ModelT), in the order AllocateTensors
    makes them (micro_allocator.cc, micro_interpreter.cc)."""
    return _walk(model, allocator)[0]


def _walk(model: Any, allocator: str) -> tuple[list[Alloc], list[HeadNeed]]:
    fb = schema()
    if allocator not in PREAMBLES:
        raise PlannerError(f"unknown allocator '{allocator}': use {', '.join(PREAMBLES)}")
    subgraphs = list(model.subgraphs or [])
    if len(subgraphs) != 1:
        raise TailUnknown(f"no tail model for a model with {len(subgraphs)} subgraphs")
    if any(_meta_name(m) == "COMPRESSION_METADATA" for m in model.metadata or []):
        raise TailUnknown("no tail model for compressed tensors (COMPRESSION_METADATA)")
    sg = subgraphs[0]
    tensors, ops = list(sg.tensors or []), list(sg.operators or [])
    allocs = [Alloc("allocator", name, size, align) for name, size, align in PREAMBLES[allocator]]
    # StartModelAllocation
    allocs.append(Alloc("allocator", "MicroBuiltinDataAllocator", *BUILTIN_DATA_ALLOCATOR))
    allocs.append(Alloc("allocator", "SubgraphAllocations", *SUBGRAPH_ALLOCATIONS))
    allocs.append(Alloc("eval tensors", f"TfLiteEvalTensor x {len(tensors)}",
                        EVAL_TENSOR[0] * len(tensors), EVAL_TENSOR[1]))
    allocs.append(Alloc("nodes", f"NodeAndRegistration x {len(ops)}",
                        NODE_AND_REGISTRATION[0] * len(ops), NODE_AND_REGISTRATION[1]))
    needs = [HeadNeed(len(allocs), _SCRATCH_REQUEST * MAX_SCRATCH_PER_OP, 1,
                      "the scratch-request list")]
    views = []
    for op in ops:
        name, custom = _op_name(fb, model, op)
        table = CUSTOM_KERNELS if custom else BUILTIN_KERNELS
        if name not in table:
            what = "custom op" if custom else "op"
            raise TailUnknown(f"no tail model for {what} {name}")
        views.append((OpView(fb, model, sg, op, name), table[name]))
    # PrepareNodeAndRegistrationDataFromFlatbuffer: the parsed builtin options, op by op
    for view, kernel in views:
        if kernel.params is not None:
            allocs.append(Alloc("builtin data", f"{view.name} params", *kernel.params))
    # InitSubgraphs, then PrepareSubgraphs
    for view, kernel in views:
        allocs.extend(Alloc("op data", f"{view.name} OpData", s, ARENA_ALIGN) for s in kernel.init)
    scratch = 0
    for view, kernel in views:
        # Prepare reads its tensors as temporary TfLiteTensors above the request list;
        # its arrays must not reach them (TFLM checks them against the list only).
        requests = _SCRATCH_REQUEST * (scratch + MAX_SCRATCH_PER_OP)
        allocs.extend(Alloc("op data", f"{view.name} per-channel", s, ARENA_ALIGN)
                      for s in kernel.prepare(view))
        needs.append(HeadNeed(len(allocs), _temp_tensors(requests, view, kernel.temps), 1,
                              f"{view.name}'s temporary tensors"))
        scratch += kernel.scratch(view)
    # FinishModelAllocation: scratch handles, then (CommitStaticMemoryPlan) the variables
    # the offline plan does not place in the head
    if scratch:
        allocs.append(Alloc("scratch handles", f"ScratchBufferHandle x {scratch}",
                            SCRATCH_HANDLE[0] * scratch, SCRATCH_HANDLE[1]))
    offsets = read_offline_offsets(model)
    planned = 0
    for i, t in enumerate(tensors):
        offline = offsets is not None and i < len(offsets) and offsets[i] >= 0
        if t.isVariable and not offline:
            allocs.append(Alloc("variables", _tname(t), _dtype_bytes(fb, t), ARENA_ALIGN))
        elif (not _is_constant(model, t) and _tensor_bytes(fb, t) > 0
              and (not t.isVariable or offline)):
            planned += 1
    # CommitStaticMemoryPlan: above the request list, the allocation-info array (one per
    # tensor and scratch request), then the planner's 40 B per buffer it plans.
    info = _align(_align(_SCRATCH_REQUEST * (scratch + MAX_SCRATCH_PER_OP), 8) + POINTER, 8)
    info += ALLOCATION_INFO * (len(tensors) + scratch)
    needs.append(HeadNeed(len(allocs), _align(info, ARENA_ALIGN)
                          + PLANNER_PER_BUFFER * (planned + scratch), ARENA_ALIGN,
                          "the memory planner's working data"))
    # MicroInterpreter::AllocateTensors: input then output TfLiteTensor pointer arrays
    for role, group in (("input", sg.inputs), ("output", sg.outputs)):
        group = list(group) if group is not None else []
        allocs.append(Alloc("io tensors", f"{role} pointers", POINTER * len(group), ARENA_ALIGN))
        for i in group:
            allocs.extend(_persistent_tensor(fb, tensors[i], role))
    return allocs, needs


# The temporary data of AllocateTensors (micro_allocator.cc, micro_allocation_info.cc,
# greedy_memory_planner.h), 64-bit host.
_SCRATCH_REQUEST = 16  # internal::ScratchBufferRequest
MAX_SCRATCH_PER_OP = 12  # kMaxScratchBuffersPerOp: the request list keeps room for as many
ALLOCATION_INFO = 32  # AllocationInfo
PLANNER_PER_BUFFER = 40  # GreedyMemoryPlanner::per_buffer_size()


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


def _temp_tensors(start: int, view: OpView, temps: tuple[str, ...] | None) -> int:
    """Head bytes after AllocateTempTfLiteTensor of each tensor Prepare reads: a
    TfLiteTensor and, when quantized, its quantization and zero points."""
    ins = list(view._op.inputs if view._op.inputs is not None else [])
    outs = list(view._op.outputs if view._op.outputs is not None else [])
    if temps is None:
        group = ins + outs
    else:
        group = [(ins if t[0] == "i" else outs)[int(t[1:])] if int(t[1:]) < len(
            ins if t[0] == "i" else outs) else -1 for t in temps]
    end = start
    for i in group:
        if i < 0:
            continue
        end = _align(end, TFLITE_TENSOR[1]) + TFLITE_TENSOR[0]
        quant = _persistent_tensor(view._fb, view._sg.tensors[i], "temp")[1:]
        for a in quant:
            end = _align(end, a.align) + a.size
    return end


def _is_constant(model: Any, t: Any) -> bool:
    buffers = model.buffers or []
    data = buffers[t.buffer].data if 0 <= t.buffer < len(buffers) else None
    return data is not None and len(data) > 0


def _tensor_bytes(fb: Any, t: Any) -> int:
    try:
        return _dtype_bytes(fb, t)
    except TailUnknown:
        return 1  # only "nonzero" matters here


def _meta_name(m: Any) -> str:
    raw = m.name
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def _used(allocs: Sequence[Alloc]) -> list[int]:
    """Bytes each allocation moves the tail by, from an arena end on a 16-byte boundary."""
    used, out = 0, []
    for a in allocs:
        new = -(-(used + a.size) // a.align) * a.align
        out.append(new - used)
        used = new
    return out


def predict_tail(model: bytes | Any, allocator: str = "recording") -> TailPrediction:
    """The arena tail TFLM allocates for `model` (bytes or a ModelT), for an arena whose end
    is 16-byte aligned (a 16-aligned buffer whose size is a multiple of 16)."""
    m = read_model(model) if isinstance(model, (bytes, bytearray)) else model
    allocs = tuple(tail_allocations(m, allocator))
    return TailPrediction(sum(_used(allocs)), allocs)


def emitted_model(graph: Any, plan: Any, model_path: Path, profile: Any = None) -> bytes:
    """The .tflite `solve` emits for `plan`: the offline-planned model of a spill-free
    plan, the rewritten one of a plan with spills or fusions. It is built by the writer
    itself (into a scratch directory, its notes silenced: `solve` prints them when it
    writes for real), so predictions follow whatever the writer emits."""
    from backends.tflite.offline import write_offline_tflite

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()):
        written = write_offline_tflite(graph, plan, Path(model_path), Path(tmp), profile=profile)
        return written[0].read_bytes()


def plan_tail(graph: Any, plan: Any, model_path: Path, profile: Any = None) -> TailPrediction:
    """The tail of the .tflite `solve` emits for `plan`."""
    return predict_tail(emitted_model(graph, plan, model_path, profile))


class ArenaTail:
    """The tail of what `solve` emits, for its budget loop: None, with a note saying why,
    where there is no TFLM model (ONNX input) or an op has no rule here."""

    def __init__(self, graph: Any, model_path: Path, profile: Any = None) -> None:
        self.graph, self.model_path, self.profile = graph, Path(model_path), profile
        self.note: str | None = None
        self.parts: dict[str, int] = {}
        self.model: Any = None
        if graph.source_format != "tflite":
            self._unknown("ONNX input has no TFLM model: no tail predicted")

    def _unknown(self, why: str) -> None:
        self.note = f"{why}; the budget bounds the head"

    def _guard(self, data: Callable[[], bytes]) -> int | None:
        if self.note is not None:
            return None
        try:
            model = read_model(data())
            prediction = predict_tail(model)
        except TailUnknown as exc:
            self._unknown(f"tail not predicted: {exc}")
            return None
        self.model, self.parts = model, prediction.by_kind()
        return prediction.bytes

    def of_model(self) -> int | None:
        """The tail of the model as given (a spill-free plan's, and the first estimate)."""
        return self._guard(self.model_path.read_bytes)

    def of_plan(self, plan: Any) -> int | None:
        return self._guard(lambda: emitted_model(self.graph, plan, self.model_path,
                                                 self.profile))

    def arena(self, head: int) -> int | None:
        """The arena the last predicted model needs with this head (see load_arena)."""
        return None if self.note is not None else load_arena(self.model, head)


def load_arena(model: bytes | Any, head: int, allocator: str = "recording") -> int:
    """The smallest arena (a multiple of 16, 16-byte aligned) in which TFLM allocates
    `model` with an arena head of `head` bytes: head + tail, or more where the temporary
    data of preparing and planning does not fit in that (models with a small head)."""
    m = read_model(model) if isinstance(model, (bytes, bytearray)) else model
    allocs, needs = _walk(m, allocator)
    used = [0]
    for u in _used(allocs):
        used.append(used[-1] + u)
    need = _align(head, ARENA_ALIGN) + used[-1]
    for n in needs:
        need = max(need, n.head + _align(used[n.index], n.tail_align))
    return _align(need, ARENA_ALIGN)
