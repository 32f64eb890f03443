"""The arena machine: plans run in an arena of exactly their peak and match the model run whole.

Spill plans come from the exact planner ("ilp") where it is present, and are also
built here by hand (first-fit offsets, then the checker) to cover every transfer
kind on purpose: fetch, stream into a concat, stream into a fused concat+conv, and
channel-split parts streamed or fetched. Corrupted plans (one segment moved onto a
live one, a fetch dropped) must come out as mismatches.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS, ROOT

from backends.executor import (
    compare,
    execute,
    kernels_for,
    open_storages,
    random_inputs,
    run_plan,
)
from frontends import load_model
from planner.analysis import fusion_groups, lifetimes, line_buffer_bytes, working_set_bound
from planner.checker import assert_valid, check
from planner.cli import main
from planner.device import load_profile
from planner.errors import PlannerError
from planner.ir import ALIGNMENT, Graph, align
from planner.plan import Fusion, Part, Plan, Segment, Transfer
from planner.planners.base import Request, registry

ZOO = ROOT / "benchmarks" / "models"
UNET_TFLITE = ZOO / "tiny_unet_int8.tflite"
UNET_ONNX = ZOO / "tiny_unet.onnx"
# Every registered planner but the exact one (its solves are slow; ILP_CASES cover it).
SWEEP = sorted(n for n in registry() if n != "ilp")


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path.name} is absent")
    return path


def _onnx_frontend():
    return pytest.importorskip("frontends.onnx_frontend")


class Model:
    """A graph with cached kernels, inputs and reference outputs: sessions are built once."""

    def __init__(self, path: Path):
        self.path = path
        self.graph = load_model(path)
        self.kernels = kernels_for(self.graph, path)
        self.inputs = random_inputs(self.graph, seed=1)
        self.reference = self.kernels.reference(self.inputs)

    def run(self, plan: Plan, storage: str = "local"):
        return run_plan(self.graph, plan, self.path, storage, self.inputs, kernels=self.kernels,
                        reference=self.reference)


_MODELS: dict[Path, Model] = {}


def model(path: Path) -> Model:
    """One Model per file for the whole test session."""
    if path.suffix == ".onnx":
        _onnx_frontend()
    if path not in _MODELS:
        _MODELS[path] = Model(_need(path))
    return _MODELS[path]


@pytest.fixture(scope="module")
def unet() -> Model:
    return model(UNET_TFLITE)


@pytest.fixture(scope="module")
def unet_onnx() -> Model:
    return model(UNET_ONNX)


def _plan(graph: Graph, name: str, budget: int | None = None, profile: str = "qspi-flash"):
    planners = registry()
    if name not in planners:
        pytest.skip(f"planner {name} is not available")
    prof = load_profile(profile)
    plan = planners[name](Request(graph, prof, budget=budget, time_limit=30))
    assert_valid(graph, plan, prof.capacities)
    return plan


# -- hand-built spill plans ---------------------------------------------------------

def _first_fit(items: list[dict]) -> int:
    """Offsets by first fit, largest first, over closed step intervals; returns the peak."""
    placed: list[dict] = []
    for it in sorted(items, key=lambda i: (-i["size"], i["first"])):
        offset = 0
        for other in sorted((p for p in placed if p["first"] <= it["last"]
                             and it["first"] <= p["last"]), key=lambda p: p["offset"]):
            if offset + it["size"] <= other["offset"]:
                break
            offset = max(offset, other["offset"] + other["size"])
        it["offset"] = offset
        placed.append(it)
    return max(p["offset"] + p["size"] for p in placed)


def hand_plan(graph: Graph, tensor: int, mode: str, fuse_conv: bool = True,
              storage: str = "qspi") -> Plan:
    """Spill skip tensor `tensor` (read later only by a fusible concat) in one of five ways.

    fetch: whole tensor spilled after its last early read, fetched before the concat;
    stream: streamed into the concat (or the fused conv) through a line buffer;
    split-stream / split-fetch: the trailing half of the channels spilled after the last
    early read, the leading half kept (compacted); the spilled half comes back by stream
    or fetch.
    """
    life = lifetimes(graph)
    group = next(g for g in fusion_groups(graph)
                 if tensor in graph.ops[g.concat].inputs)
    conv = group.conv if fuse_conv and mode != "fetch" else None
    read = (conv if conv is not None else group.concat) + 1  # step of the streaming read
    first, last = life[tensor]
    early = [op.index + 1 for op in graph.ops if tensor in op.inputs and op.index + 1 < read - 1]
    spill_at = max(early, default=first)
    concat_out = graph.ops[group.concat].outputs[0]
    items: list[dict] = []
    for t, (a, b) in life.items():
        if t == tensor or (conv is not None and t == concat_out):
            continue
        if conv is not None and t in graph.ops[group.concat].inputs:
            b = max(b, read)  # the fused conv reads the concat inputs at its own step
        items.append(dict(tensor=t, first=a, last=b, size=align(graph.tensors[t].nbytes)))
    t_bytes = graph.tensors[tensor].nbytes
    parts: tuple[Part, ...] = ()
    transfers: list[Transfer] = []
    fusions = (Fusion(group.concat, conv),) if mode != "fetch" else ()
    if not mode.startswith("split"):
        items.append(dict(tensor=tensor, first=first, last=spill_at, size=align(t_bytes)))
        transfers.append(Transfer("spill", tensor, spill_at, storage, t_bytes, 0))
        if mode == "fetch":
            items.append(dict(tensor=tensor, first=read, last=last, size=align(t_bytes)))
            transfers.append(Transfer("fetch", tensor, read, storage, t_bytes, 0))
        else:
            size = line_buffer_bytes(graph, tensor, conv)
            items.append(dict(tensor=tensor, first=read, last=read, size=size,
                              role="line_buffer"))
            transfers.append(Transfer("stream", tensor, read, storage, t_bytes, 0))
    else:
        c = graph.tensors[tensor].channels
        k = c // 2
        keep, spill = t_bytes * k // c, t_bytes - t_bytes * k // c
        parts = (Part(tensor, 0, 0, k, keep), Part(tensor, 1, k, c, spill))
        # Both first segments start at the producer back to back: place them as one block.
        items.append(dict(tensor=tensor, first=first, last=max(last, read),
                          size=align(keep) + align(spill), block=True))
        transfers.append(Transfer("spill", tensor, spill_at, storage, spill, 0, part=1))
        if mode == "split-fetch":
            items.append(dict(tensor=tensor, part=1, first=read, last=read, size=align(spill)))
            transfers.append(Transfer("fetch", tensor, read, storage, spill, 0, part=1))
        else:
            size = line_buffer_bytes(graph, tensor, conv, spill)
            items.append(dict(tensor=tensor, part=1, first=read, last=read, size=size,
                              role="line_buffer"))
            transfers.append(Transfer("stream", tensor, read, storage, spill, 0, part=1))
    peak = _first_fit(items)
    segments = []
    for it in items:
        if it.get("block"):
            segments.append(Segment(tensor, first, it["last"], it["offset"], align(keep), 0))
            segments.append(Segment(tensor, first, spill_at, it["offset"] + align(keep),
                                    align(spill), 1))
        else:
            segments.append(Segment(it["tensor"], it["first"], it["last"], it["offset"],
                                    it["size"], it.get("part"), it.get("role", "tensor")))
    plan = Plan(graph.name, f"hand-{mode}", graph.num_steps, peak, tuple(segments), parts,
                tuple(transfers), fusions)
    assert_valid(graph, plan, {storage: 1 << 24})
    return plan


def move_onto_live(plan: Plan, graph: Graph) -> Plan:
    """Move one segment onto another tensor's bytes while that tensor still has a read ahead."""
    reads = {t: [op.index + 1 for op in graph.ops if t in op.inputs] for t in lifetimes(graph)}
    tensor_segs = [s for s in plan.segments if s.role == "tensor"]
    for victim in sorted(tensor_segs, key=lambda s: s.first - s.last):
        for s in plan.segments:
            if s.tensor == victim.tensor or not victim.first < s.first <= victim.last:
                continue
            if not any(s.first < r <= victim.last for r in reads[victim.tensor]):
                continue
            if victim.offset + s.size > plan.peak_bytes:
                continue
            moved = replace(s, offset=victim.offset)
            segments = tuple(moved if x is s else x for x in plan.segments)
            return replace(plan, segments=segments)
    raise AssertionError("no segment could be moved onto a live one")


# -- spill-free plans ------------------------------------------------------------------

ZOO_FILES = sorted(ZOO.glob("*.onnx")) + sorted(ZOO.glob("*.tflite")) or [UNET_TFLITE]


@pytest.mark.parametrize("path", ZOO_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("name", SWEEP)
def test_every_planner_matches_on_zoo(path: Path, name: str):
    m = model(path)
    plan = _plan(m.graph, name)
    result = m.run(plan)
    assert result.mismatch is None, result.mismatch
    assert result.execution.poisoned_bytes > 0


@pytest.mark.parametrize("name", SWEEP)
def test_every_planner_under_a_spill_budget_matches(unet: Model, name: str):
    # 270,000 B is below the Tiny U-Net's load bound: spilling planners must spill.
    try:
        plan = _plan(unet.graph, name, budget=270_000)
    except PlannerError as exc:
        pytest.skip(f"{name}: {exc}")
    result = unet.run(plan)
    assert result.mismatch is None, result.mismatch
    stats = result.execution.storage.values()
    assert sum(s.bytes_written for s in stats) == plan.spilled_bytes


@pytest.mark.parametrize("name", ["mlperf_tiny/pretrainedResnet_quant.tflite",
                                  "mlperf_tiny/ad01_int8.tflite"])
def test_tflm_greedy_matches_on_shared_models(name: str):
    m = model(MODELS / name)
    result = m.run(_plan(m.graph, "tflm-greedy"))
    assert result.mismatch is None, result.mismatch


def test_arena_is_exactly_the_peak(unet: Model):
    plan = _plan(unet.graph, "tflm-greedy")
    from backends.executor import ArenaMachine

    machine = ArenaMachine(unet.graph, plan, unet.kernels)
    assert machine.arena.nbytes == plan.peak_bytes
    # Shrink the arena by one alignment unit: the top segment no longer fits.
    short = replace(plan, peak_bytes=plan.peak_bytes - ALIGNMENT)
    result = unet.run(short)
    assert result.mismatch is not None and "fit" in result.mismatch


# -- hand-built spill plans -----------------------------------------------------------

HAND = [("fetch", True), ("stream", False), ("stream", True),
        ("split-stream", True), ("split-fetch", True)]


@pytest.mark.parametrize(("mode", "fuse"), HAND)
def test_hand_built_spill_plans_match(unet: Model, mode: str, fuse: bool):
    skip = 6  # conv1 output: read at step 3 and by the last concat at step 21
    plan = hand_plan(unet.graph, skip, mode, fuse_conv=fuse)
    result = unet.run(plan)
    assert result.mismatch is None, result.mismatch
    stats = result.execution.storage["qspi"]
    moved = next(t.nbytes for t in plan.transfers if t.kind == "spill")
    assert stats.bytes_written == moved and stats.bytes_read == moved
    if mode == "stream":
        rows = unet.graph.tensors[skip].shape[1]
        kh = 3 if fuse else 1  # a fused 3x3 conv pulls three rows per read
        assert stats.reads == -(-rows // kh)


def test_dropped_fetch_reads_poison(unet: Model):
    plan = hand_plan(unet.graph, 6, "fetch")
    broken = replace(plan, transfers=tuple(t for t in plan.transfers if t.kind != "fetch"))
    assert check(unet.graph, broken)
    result = unet.run(broken)
    assert result.mismatch is not None


@pytest.mark.parametrize("mode", ["fetch", "stream"])
def test_transfer_from_the_wrong_address_is_caught(unet: Model, mode: str):
    plan = hand_plan(unet.graph, 6, mode)
    # The checker does not tie a fetch's address to its spill's; the executor honours it.
    moved = tuple(replace(t, address=t.address + 16) if t.kind != "spill" else t
                  for t in plan.transfers)
    for storage in ("local", "remote"):
        result = unet.run(replace(plan, transfers=moved), storage)
        assert result.mismatch is not None and "no spill wrote" in result.mismatch


@pytest.mark.parametrize("mode", ["tflm-greedy", "stream", "split-stream"])
def test_segment_moved_onto_live_one_is_caught(unet: Model, mode: str):
    plan = _plan(unet.graph, "tflm-greedy") if mode == "tflm-greedy" else \
        hand_plan(unet.graph, 6, mode)
    broken = move_onto_live(plan, unet.graph)
    assert check(unet.graph, broken), "the corruption must break a checker rule"
    result = unet.run(broken)
    assert result.mismatch is not None


def test_remote_storage_gives_the_local_outputs(unet: Model):
    plan = hand_plan(unet.graph, 6, "split-stream")
    local, remote = unet.run(plan, "local"), unet.run(plan, "remote")
    assert local.mismatch is None and remote.mismatch is None
    for t in unet.graph.outputs:
        assert np.array_equal(local.execution.outputs[t], remote.execution.outputs[t])
    lst, rst = local.execution.storage["qspi"], remote.execution.storage["qspi"]
    assert (rst.kind, rst.bytes_written, rst.bytes_read) == ("remote", lst.bytes_written,
                                                             lst.bytes_read)


# -- the exact planner's spill plans --------------------------------------------------

ILP_CASES = [  # (model, budget or None for the working-set bound, profile, storage)
    (UNET_TFLITE, 290_000, "qspi-flash", "local"),  # partial spill + fetch, concat+conv
    (UNET_TFLITE, 240_000, "qspi-flash", "remote"),  # whole-tensor spill + fetch
    (UNET_TFLITE, None, "qspi-flash", "local"),  # streamed into fused concat+convs
    (UNET_TFLITE, None, "mixed", "remote"),  # the same over two storages
]


@pytest.mark.parametrize(("path", "budget", "profile", "storage"), ILP_CASES,
                         ids=lambda v: v.name if isinstance(v, Path) else str(v))
def test_ilp_spill_plans_match(path: Path, budget: int | None, profile: str, storage: str):
    m = model(path)
    budget = budget or working_set_bound(m.graph).bytes
    plan = _plan(m.graph, "ilp", budget, profile)
    assert plan.peak_bytes <= budget and plan.transfers
    if budget == 290_000:
        assert plan.parts, "expected a channel split at this budget"
    result = m.run(plan, storage)
    assert result.mismatch is None, result.mismatch
    stats = result.execution.storage.values()
    assert sum(s.bytes_written for s in stats) == plan.spilled_bytes
    assert sum(s.bytes_read for s in stats) == plan.fetched_bytes
    for name in {t.storage for t in plan.transfers}:  # bytes moved per storage
        moved = [t for t in plan.transfers if t.storage == name]
        st = result.execution.storage[name]
        assert st.kind == storage
        assert st.bytes_written == sum(t.nbytes for t in moved if t.kind == "spill")
    if budget == working_set_bound(m.graph).bytes and storage == "local":
        assert m.run(move_onto_live(plan, m.graph)).mismatch is not None


# -- ONNX ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tflm-greedy", "linear"])
def test_onnx_plans_match(unet_onnx: Model, name: str):
    result = unet_onnx.run(_plan(unet_onnx.graph, name))
    assert result.mismatch is None, result.mismatch


def test_onnx_plans_neither_fuse_nor_stream(unet_onnx: Model):
    """No emitted kernel computes a float NCHW concat or conv: the ILP's plan at the
    working-set bound moves nothing and still matches."""
    g = unet_onnx.graph
    assert fusion_groups(g) == []
    plan = _plan(g, "ilp", working_set_bound(g).bytes)
    assert not plan.fusions and not plan.parts
    assert unet_onnx.run(plan).mismatch is None


def test_onnx_corrupted_plan_is_caught(unet_onnx: Model):
    broken = move_onto_live(_plan(unet_onnx.graph, "tflm-greedy"), unet_onnx.graph)
    assert unet_onnx.run(broken).mismatch is not None


# -- comparison and the command -----------------------------------------------------

@pytest.mark.parametrize("name", ["tflm/keyword_scrambled_8bit.tflite",
                                  "tflm/person_detect.tflite"])
def test_models_litert_cannot_run_fall_back_to_tflm(name: str):
    # keyword_scrambled: litert's reference SVDF corrupts the heap (the process would
    # abort); person_detect: litert rejects its quantization metadata.
    m = model(MODELS / name)
    assert m.kernels.runtime == "tflm"
    result = m.run(_plan(m.graph, "tflm-greedy"))
    assert result.mismatch is None, result.mismatch


def test_litert_runtime_refuses_svdf():
    from backends.executor.kernels_tflite import TfliteKernels

    path = _need(MODELS / "tflm" / "keyword_scrambled_8bit.tflite")
    with pytest.raises(PlannerError, match="SVDF"):
        TfliteKernels(load_model(path), path, runtime="litert")


def test_compare_rules(unet: Model):
    g = unet.graph
    out = g.outputs[0]
    want = {out: np.zeros(g.tensors[out].shape, np.int8)}
    assert compare(g, want, want) is None
    off = {out: want[out].copy()}
    off[out].flat[5] = 1
    assert "1 of" in compare(g, off, want)
    f = {out: np.full(g.tensors[out].shape, 1000.0, np.float32)}
    assert compare(g, {out: f[out] * (1 + 5e-7)}, f) is None
    assert compare(g, {out: f[out] * (1 + 5e-6)}, f) is not None


def test_execute_without_storage_backend_is_refused(unet: Model):
    plan = hand_plan(unet.graph, 6, "fetch")
    with pytest.raises(PlannerError, match="no storage backend"):
        execute(unet.graph, plan, unet.kernels, unet.inputs, {})
    with open_storages(plan) as backends:
        assert set(backends) == {"qspi"}


def test_run_command(unet: Model, tmp_path: Path, capsys):
    from planner.device import load_profile
    from planner.plan_check import stamp_plan

    # run refuses a plan that names no model and profile (issue 14): stamp the hand-made one.
    plan = stamp_plan(hand_plan(unet.graph, 6, "stream"), UNET_TFLITE, load_profile("qspi-flash"))
    good = tmp_path / "plan.json"
    plan.save(good)
    np.savez(tmp_path / "in.npz", **{unet.graph.tensors[t].name: a
                                    for t, a in unet.inputs.items()})
    assert main(["run", str(UNET_TFLITE), str(good), "--inputs", str(tmp_path / "in.npz")]) == 0
    assert "match" in capsys.readouterr().out
    assert main(["run", str(UNET_TFLITE), str(good), "--storage", "remote", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["match"] and report["storages"][0]["kind"] == "remote"
    assert report["storages"][0]["bytes_read"] == unet.graph.tensors[6].nbytes
    bad = tmp_path / "bad.json"
    move_onto_live(plan, unet.graph).save(bad)
    assert main(["run", str(UNET_TFLITE), str(bad)]) == 2  # the checker refuses it
    assert main(["run", str(UNET_TFLITE), str(bad), "--unchecked", "--json"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "mismatch:" in err
