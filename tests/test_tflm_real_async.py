"""Asynchronous windows inside real TFLM (issue #16): the rewritten Tiny U-Net with an
async Spill and an async Fetch (each completed by a TinyPlanWait) runs with file storage
behind each asynchronous driver, three inferences in a row on one interpreter, with
outputs identical to the blocking plan's and to the original model's. Skips without a
TFLM tree matching the installed wheel (see tests/test_tflm_real.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_tflite_rewrite_async import windowed_unet
from test_tflm_real import _skip_reason

from backends.tflite import io
from backends.tflite.rewrite import write_rewritten_tflite
from backends.tflm import custom as tc
from backends.tflm.interpreter import invoke_runs, random_inputs

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from async_plans import ILP_LATENCY_CASES, blocking, ilp_latency_plan, windows  # noqa: E402

pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))
REGISTERER = ["TinyPlanRegisterer"]
RUNS = 3


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    cache = tmp_path_factory.mktemp("tflm-cache")
    try:
        return tc.load(cache=cache)
    except Exception as exc:  # a tree from another release: the link fails
        if "link" in str(exc):
            pytest.skip(f"TFLM tree and installed wheel do not match: {exc}")
        raise


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from test_tflite_rewrite import PROFILE, TINY_UNET

    graph, base, plan, _ = windowed_unet()
    [blocking] = write_rewritten_tflite(graph, base, TINY_UNET,
                                        tmp_path_factory.mktemp("blocking"), profile=PROFILE)
    [windowed] = write_rewritten_tflite(graph, plan, TINY_UNET,
                                        tmp_path_factory.mktemp("async"), profile=PROFILE)
    return TINY_UNET.read_bytes(), blocking.read_bytes(), windowed.read_bytes(), plan.peak_bytes


def _run(ops, model: bytes, mode: str, workdir, inputs):
    workdir.mkdir(parents=True, exist_ok=True)
    specs = tc.storage_specs(io.read_model(model), "file", workdir=workdir)
    tc.configure_storages(ops, specs)
    tc.set_async(ops, mode)
    try:
        results, figures = invoke_runs(model, inputs, registerers=REGISTERER)
        counts = tc.async_counts(ops)
    finally:
        tc.set_async(ops, "off")
    for r in results:
        assert not isinstance(r, str), r
    return results, figures, counts


def _same(a, b) -> bool:
    return all(x.shape == y.shape and (x == y).all()
               for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def test_async_plan_gives_the_blocking_outputs_on_real_tflm(ops, models, tmp_path):
    original, blocking, windowed, peak = models
    assert "TinyPlanWait" in io.custom_op_names(io.read_model(windowed))
    inputs = [random_inputs(original, seed=s) for s in range(RUNS)]
    want, _ = invoke_runs(original, inputs)
    base, _, _ = _run(ops, blocking, "off", tmp_path / "b", inputs)
    assert _same(want, base)
    for mode in ("off", "blocking", "thread", "thread-latest"):
        got, figures, (started, on_worker) = _run(ops, windowed, mode, tmp_path / mode, inputs)
        assert _same(base, got), mode
        # Both windows were really in flight on a channel (none without one).
        assert started == (2 * RUNS if mode != "off" else 0), mode
        assert (on_worker > 0) == mode.startswith("thread"), mode
        # The offline plan holds the buffers over their windows within the plan's peak.
        assert figures["head"] <= peak


def test_a_wait_after_the_read_is_caught_on_real_tflm(ops, models, tmp_path):
    """The fetch's TinyPlanWait moved past the op reading the copy: moved at its issue
    (blocking driver) the data is there in time, moved at the window's end
    (thread-latest) the reader sees the bytes the copy held before."""
    original, _, windowed, _ = models
    model = io.read_model(windowed)
    sub = model.subgraphs[0]
    names = [io._name(model.operatorCodes[op.opcodeIndex].customCode) for op in sub.operators]
    wait = max(i for i, n in enumerate(names) if n == "TinyPlanWait")  # the fetch's
    sub.operators.insert(wait + 1, sub.operators.pop(wait))
    planted = io.write_model(model)
    inputs = [random_inputs(original, seed=s) for s in range(2)]
    want, _ = invoke_runs(original, inputs)
    early, _, _ = _run(ops, planted, "blocking", tmp_path / "early", inputs)
    late, _, _ = _run(ops, planted, "thread-latest", tmp_path / "late", inputs)
    assert _same(want, early)
    assert not _same(want, late)


@pytest.mark.parametrize(("name", "fraction"), ILP_LATENCY_CASES)
def test_ilp_latency_plans_on_real_tflm(name, fraction, ops, tmp_path):
    """The exact planner's own windows (--objective latency), rewritten: the blocking
    version of the same plan and the original model give the same outputs."""
    g, plan, prof, path = ilp_latency_plan(name, fraction)
    for sub in ("async", "blocking"):
        (tmp_path / sub).mkdir()
    [windowed] = write_rewritten_tflite(g, plan, path, tmp_path / "async", profile=prof)
    [blocked] = write_rewritten_tflite(g, blocking(plan), path, tmp_path / "blocking",
                                       profile=prof)
    original = path.read_bytes()
    inputs = [random_inputs(original, seed=s) for s in range(RUNS)]
    want, _ = invoke_runs(original, inputs)
    base, _, _ = _run(ops, blocked.read_bytes(), "off", tmp_path / "b", inputs)
    assert _same(want, base)
    for mode in ("off", "thread", "thread-latest"):
        got, figures, (started, _) = _run(ops, windowed.read_bytes(), mode, tmp_path / mode,
                                          inputs)
        assert _same(want, got), mode
        assert started == (RUNS * len(windows(plan)) if mode != "off" else 0)
        assert figures["head"] == plan.peak_bytes


def test_verify_tflm_runs_the_windows_on_a_worker_thread(ops, capsys, tmp_path):
    """verify-tflm --async: the channels are made in the process that invokes (threads do
    not survive the fork that isolates TFLM)."""
    import json

    from planner.cli import main

    g, plan, prof, path = ilp_latency_plan(*ILP_LATENCY_CASES[0])
    (tmp_path / "out").mkdir()
    [written] = write_rewritten_tflite(g, plan, path, tmp_path / "out", profile=prof)
    for mode in ("thread", "thread-latest"):
        capsys.readouterr()
        code = main(["verify-tflm", str(path), str(written), "--runs", "2", "--json",
                     "--storage", "file", "--profile", "qspi-flash", "--async", mode])
        report = json.loads(capsys.readouterr().out)
        assert code == 0 and report["ok"], report
        assert report["async"]["windows_started"] == 2 * len(windows(plan))
        assert report["async"]["on_worker"] > 0
