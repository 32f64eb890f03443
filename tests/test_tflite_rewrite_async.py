"""The .tflite rewrite of asynchronous windows (issue #16): an async Spill (9th option
word 1) after the op at its step and a TinyPlanWait after the op at its window's end; an
async Fetch before the op at its window's first step and a TinyPlanWait before the op at
its step. Every tensor lives inside its plan segment, so the buffers are held over the
windows in the offline plan itself."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest
from test_tflite_rewrite import PROFILE, TINY_UNET, _ops, hand_plan

from backends.tflite import io
from backends.tflite.rewrite import check_rewritten, file_lifetimes, rewrite
from frontends import load_model
from planner.analysis import lifetimes
from planner.checker import check

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from async_plans import hold, windows  # noqa: E402


def windowed_unet(after: int = 2, before: int = 2):
    """Tiny U-Net, its longest skip into the last concat spilled after its first read and
    fetched back before the concat, with a spill window and a fetch window."""
    if not TINY_UNET.is_file():
        pytest.skip("tiny_unet_int8.tflite is absent")
    graph = load_model(TINY_UNET)
    life = dict(lifetimes(graph))
    k = max(i for i, op in enumerate(graph.ops) if op.op_type == "CONCATENATION")
    skip = max(graph.ops[k].inputs, key=lambda t: life[t][1] - life[t][0])
    base = hand_plan(graph, spills=[(skip, life[skip][0] + 1, k + 1, "fetch")])
    plan = hold(base, skip, after=after, before=before)
    assert {t.kind for t in windows(plan)} == {"spill", "fetch"}
    assert check(graph, plan) == []
    return graph, base, plan, skip


def test_async_transfers_and_their_waits_go_where_the_windows_say():
    graph, _, plan, skip = windowed_unet()
    rw = rewrite(graph, plan, TINY_UNET, PROFILE)
    data = io.write_model(rw.model)
    model = io.read_model(data)
    io.set_metadata(model, io.OFFLINE_METADATA, io.offline_entry(rw.offsets))
    data = io.write_model(model)
    assert check_rewritten(data) == []
    ops = _ops(data)
    names = [o[0] for o in ops]
    assert names.count("TinyPlanWait") == 2
    spill = next(t for t in plan.transfers if t.kind == "spill")
    fetch = next(t for t in plan.transfers if t.kind == "fetch")
    at = {name: [i for i, n in enumerate(names) if n == name] for name in set(names)}
    s, f = at["Spill"][0], at["Fetch"][0]
    w_spill, w_fetch = at["TinyPlanWait"]
    assert rw.op_steps[s] == spill.step and rw.op_steps[w_spill] == spill.window[1]
    assert rw.op_steps[f] == fetch.window[0] and rw.op_steps[w_fetch] == fetch.step
    assert struct.unpack("<9i", ops[s][3])[8] == 1 and struct.unpack("<9i", ops[f][3])[8] == 1
    assert struct.unpack("<4i", ops[w_spill][3]) == (1, 0, 0, spill.address)
    assert struct.unpack("<4i", ops[w_fetch][3]) == (1, 1, 0, fetch.address)
    # The waits read the buffers: the spill's source and the fetched copy.
    assert ops[w_spill][1] == ops[s][1] and ops[w_fetch][1] == ops[f][2]
    # The fetch's wait comes right before the op reading the copy; the spill's right after
    # the op ending its window (its source lives to there, inside its segment).
    assert ops[f][2][0] in ops[w_fetch + 1][1]
    life, _ = file_lifetimes(model)
    for t, (a, b) in life.items():
        seg = rw.segment_of.get(t)
        if seg is None:
            continue
        first = rw.op_steps[a - 1] if a > 0 else 0
        last = rw.op_steps[b - 1] if b > 0 else 0
        if t in model.subgraphs[0].outputs:
            last = graph.num_steps - 1
        assert seg.first <= first and last <= seg.last, (t, (first, last), seg)
    home = graph.tensors[skip].source_index
    assert rw.op_steps[life[home][1] - 1] == spill.window[1]


def test_blocking_transfers_keep_eight_option_words():
    graph, base, _, _ = windowed_unet()
    ops = _ops(io.write_model(rewrite(graph, base, TINY_UNET, PROFILE).model))
    assert "TinyPlanWait" not in [o[0] for o in ops]
    assert all(len(o[3]) == 32 for o in ops if o[0] in ("Spill", "Fetch"))


def test_a_malformed_async_word_is_refused():
    graph, _, plan, _ = windowed_unet()
    rw = rewrite(graph, plan, TINY_UNET, PROFILE)
    model = rw.model
    io.set_metadata(model, io.OFFLINE_METADATA, io.offline_entry(rw.offsets))
    sub = model.subgraphs[0]
    spill = next(op for op in sub.operators if io._name(
        model.operatorCodes[op.opcodeIndex].customCode) == "Spill")
    spill.customOptions = list(bytes(bytearray(spill.customOptions))[:-4] + struct.pack("<i", 2))
    assert any("Spill" in e for e in check_rewritten(io.write_model(model)))
