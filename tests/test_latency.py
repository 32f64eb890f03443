"""The end-to-end latency evaluator on small cases whose answers are checked by hand.

Op times: element-wise ops priced at 1 cycle per byte at 1 MHz, so an op over a
1000-byte input and output takes 2 ms. Transfers: bandwidth so high that a transfer
takes its storage's per-transfer latency (1 ms unless said). Latency only reads the
transfers and the step count, so plans here carry no segments.
"""

from __future__ import annotations

import pytest

from planner.device import ComputeModel, DeviceProfile, Storage
from planner.ir import OpKind
from planner.latency import blocking_and_planned, end_to_end, without_windows
from planner.plan import Plan, Transfer
from tests.graph_factory import GraphBuilder

MS = 1e-3
ONE_CYCLE = ComputeModel(clock_hz=1e6, cycles=(("elementwise", (("int8", 1.0),)),))


def chain(n: int = 6):
    """t1 = f(input); t2..t(n-1) a chain; the last op adds t(n-1) and t1 and t2 (3 B/B)."""
    b = GraphBuilder("chain")
    x = b.input((1, 1, 1, 1000))
    ts = [x]
    for _ in range(n - 1):
        ts.append(b.op(OpKind.ELEMENTWISE, [ts[-1]], (1, 1, 1, 1000)))
    out = b.op(OpKind.ELEMENTWISE, [ts[-1], ts[1], ts[2]], (1, 1, 1, 1000))
    return b.build([out]), ts


def storage(name: str = "s", *, dma: bool = True, latency: float = MS, erase_block: int = 1,
            erase: float = 0.0, erase_blocks_bus: bool = True) -> Storage:
    return Storage(name, 1 << 20, 1e15, 1e15, latency, erase_block=erase_block,
                   async_channel=dma, erase_blocks_bus=erase_blocks_bus, erase_s=erase)


def profile(*storages: Storage) -> DeviceProfile:
    return DeviceProfile("t", 1 << 20, storages, compute=ONE_CYCLE)


def plan(graph, *transfers: Transfer) -> Plan:
    return Plan(graph.name, "hand", graph.num_steps, 0, (), transfers=transfers)


def test_compute_only():
    g, _ = chain()  # ops 0..4: 2 ms each, op 5 reads three tensors: 4 ms
    lat = end_to_end(g, plan(g), profile())
    assert lat.compute_seconds == pytest.approx(14 * MS)
    assert lat.total_seconds == pytest.approx(14 * MS)
    assert lat.exposed_seconds == pytest.approx(0)
    assert lat.step_start[1:3] == pytest.approx((0, 2 * MS))


def test_blocking_fetch_adds_its_time():
    g, ts = chain()
    p = plan(g, Transfer("spill", ts[1], 2, "s", 1000), Transfer("fetch", ts[1], 6, "s", 1000))
    lat = end_to_end(g, p, profile(storage()))
    assert lat.total_seconds == pytest.approx(16 * MS)
    assert lat.exposed_seconds == pytest.approx(2 * MS)
    assert dict(lat.channel_busy)["s"] == pytest.approx(2 * MS)


def test_async_fetch_hidden_behind_long_ops_adds_nothing():
    g, ts = chain()
    # Spill after step 2 (t = 4 ms) in flight to step 3; fetch issued before step 4 (6 ms),
    # landing before step 6 (10 ms): both run beside ops.
    p = plan(g, Transfer("spill", ts[1], 2, "s", 1000, issue=2, complete=3),
             Transfer("fetch", ts[1], 6, "s", 1000, issue=4, complete=6))
    blocking, planned = blocking_and_planned(g, p, profile(storage()))
    assert planned.total_seconds == pytest.approx(14 * MS)
    assert planned.exposed_seconds == pytest.approx(0)
    assert planned.hidden_seconds == pytest.approx(2 * MS)
    assert blocking.total_seconds == pytest.approx(16 * MS)


def test_windows_on_a_storage_without_dma_stay_blocking():
    g, ts = chain()
    p = plan(g, Transfer("spill", ts[1], 2, "s", 1000, issue=2, complete=3),
             Transfer("fetch", ts[1], 6, "s", 1000, issue=4, complete=6))
    prof = profile(storage(dma=False))
    assert end_to_end(g, p, prof).total_seconds == pytest.approx(16 * MS)
    assert end_to_end(g, without_windows(p), prof).total_seconds == pytest.approx(16 * MS)


def test_fetch_that_lands_late_stalls_the_op_after_its_window():
    g, ts = chain()
    # Issued before step 5 (8 ms), a 3 ms fetch lands at 11 ms; step 6 would start at 10.
    p = plan(g, Transfer("fetch", ts[1], 6, "s", 1000, issue=5, complete=6))
    lat = end_to_end(g, p, profile(storage(latency=3 * MS)))
    assert lat.step_start[6] == pytest.approx(11 * MS)
    assert lat.total_seconds == pytest.approx(15 * MS)


def test_two_async_transfers_on_one_channel_serialise():
    g, ts = chain()
    # Two 3 ms fetches issued before step 3 (4 ms), both needed at step 6 (10 ms).
    one = plan(g, Transfer("fetch", ts[1], 6, "a", 1000, issue=3, complete=6),
               Transfer("fetch", ts[2], 6, "a", 1000, issue=3, complete=6))
    two = plan(g, Transfer("fetch", ts[1], 6, "a", 1000, issue=3, complete=6),
               Transfer("fetch", ts[2], 6, "b", 1000, issue=3, complete=6))
    prof = profile(storage("a", latency=3 * MS), storage("b", latency=3 * MS))
    assert end_to_end(g, two, prof).total_seconds == pytest.approx(14 * MS)  # 7 ms < 10
    lat = end_to_end(g, one, prof)
    assert lat.step_start[6] == pytest.approx(10 * MS)  # 4 + 3 + 3: exactly in time
    # A third on the same channel, issued later, lands at 13 ms: step 6 waits 3 ms.
    three = plan(g, *one.transfers, Transfer("fetch", ts[3], 6, "a", 1000, issue=4, complete=6))
    lat3 = end_to_end(g, three, prof)
    assert lat3.step_start[6] == pytest.approx(13 * MS)
    assert dict(lat3.channel_busy)["a"] == pytest.approx(9 * MS)


def test_blocking_transfer_waits_for_the_channel():
    g, ts = chain()
    # An async 3 ms fetch issued before step 1 (0 ms) holds the channel to 3 ms; a blocking
    # fetch before step 2 (2 ms) waits for it, then takes 3 ms: step 2 starts at 6 ms.
    p = plan(g, Transfer("fetch", ts[1], 6, "s", 1000, issue=1, complete=6),
             Transfer("fetch", ts[2], 2, "s", 1000))
    lat = end_to_end(g, p, profile(storage(latency=3 * MS)))
    assert lat.step_start[2] == pytest.approx(6 * MS)


def test_spill_must_land_before_its_buffer_is_reused():
    g, ts = chain()
    # A 5 ms spill issued after step 2 (4 ms), complete by step 3: step 4 waits to 9 ms.
    p = plan(g, Transfer("spill", ts[1], 2, "s", 1000, issue=2, complete=3))
    lat = end_to_end(g, p, profile(storage(latency=5 * MS)))
    assert lat.step_start[3] == pytest.approx(4 * MS)
    assert lat.step_start[4] == pytest.approx(9 * MS)


@pytest.mark.parametrize("blocks_bus, step2, busy", [(True, 6 * MS, 4 * MS),
                                                     (False, 3 * MS, 2 * MS)])
def test_erase_blocks_reads_only_where_the_profile_says(blocks_bus, step2, busy):
    g, ts = chain()
    # An async spill of t1 issued after step 1 (2 ms): 2 ms erase + 1 ms write; then a
    # blocking 1 ms fetch before step 2 (also at 2 ms). Erase holding the bus: spill 2..5,
    # fetch 5..6. Erase on the chip alone: the fetch takes the free bus 2..3 while the chip
    # erases 2..4, and the write follows 4..5.
    s = storage(erase_block=1000, erase=2 * MS, erase_blocks_bus=blocks_bus)
    p = plan(g, Transfer("spill", ts[1], 1, "s", 1000, issue=1, complete=4),
             Transfer("fetch", ts[0], 2, "s", 1000))
    lat = end_to_end(g, p, profile(s))
    assert lat.step_start[2] == pytest.approx(step2)
    assert dict(lat.channel_busy)["s"] == pytest.approx(busy)
    assert lat.transfer_seconds == pytest.approx(4 * MS)  # erase + write, then the fetch


def test_stream_is_double_buffered_with_dma_and_added_without():
    g, ts = chain()
    # A 3 ms stream read by the 2 ms op at step 3.
    p = plan(g, Transfer("stream", ts[1], 3, "s", 1000))
    assert end_to_end(g, p, profile(storage(latency=3 * MS))).total_seconds == \
        pytest.approx(15 * MS)
    assert end_to_end(g, p, profile(storage(latency=3 * MS, dma=False))).total_seconds == \
        pytest.approx(17 * MS)


def test_solve_reports_latency_blocking_and_as_planned(capsys):
    import json
    from pathlib import Path

    from planner.cli import main

    model = Path(__file__).resolve().parents[1] / "benchmarks/models/tiny_unet_int8.tflite"
    args = ["solve", str(model), "--planner", "tinyseg", "--budget", "170000"]
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    lat = data["latency"]
    assert data["est_latency_seconds"] == pytest.approx(lat["total_seconds"])
    assert lat["total_seconds"] == pytest.approx(lat["compute_seconds"]
                                                 + lat["exposed_transfer_seconds"])
    assert 0 < lat["exposed_transfer_seconds"] <= lat["transfer_seconds"] + 1e-12
    assert data["est_latency_blocking_seconds"] >= data["est_latency_seconds"] - 1e-12
    assert main(args) == 0
    assert "ms end to end, estimated" in capsys.readouterr().out


def test_pareto_frontier_in_either_cost():
    from planner.pareto import ParetoPoint, _non_dominated

    a = ParetoPoint(100, 100, 2.0, "optimal", est_latency_seconds=5.0)
    b = ParetoPoint(200, 200, 1.0, "optimal", est_latency_seconds=6.0)
    assert _non_dominated([a, b], "transfers") == [a, b]
    assert _non_dominated([a, b], "latency") == [a]  # more arena and slower: dominated


def test_pareto_sweep_draws_peak_against_latency(tmp_path, capsys):
    import json
    from pathlib import Path

    from planner.cli import main

    model = Path(__file__).resolve().parents[1] / "benchmarks/models/deeplab_lite_int8.tflite"
    assert main(["solve", str(model), "--pareto", "--pareto-axis", "latency", "--time-limit",
                 "5", "--json", "-o", str(tmp_path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["axis"] == "latency" and data["pareto"]
    assert all(p["est_latency_seconds"] > 0 for p in data["pareto"])
    assert "end-to-end latency" in (tmp_path / "pareto.svg").read_text()
    assert main(["solve", str(model), "--pareto-axis", "latency"]) == 2
    assert "give --pareto too" in capsys.readouterr().err


def test_random_plans_keep_the_invariants():
    """Blocking: compute + every transfer exactly. Any windows: at least the compute, at
    most compute + every transfer + nothing else (waiting is always on some transfer)."""
    import random

    g, ts = chain(8)
    rng = random.Random(7)
    prof = profile(storage("a", latency=2 * MS), storage("b", latency=0.5 * MS, dma=False),
                   storage("c", latency=3 * MS, erase_block=1000, erase=MS,
                           erase_blocks_bus=False))
    last = g.num_steps - 1
    for _ in range(200):
        transfers = []
        for _ in range(rng.randint(1, 5)):
            step = rng.randint(1, last)
            name = rng.choice("abc")
            if rng.random() < 0.5:
                transfers.append(Transfer("spill", ts[1], step, name, 1000, issue=step,
                                          complete=rng.randint(step, last)))
            else:
                transfers.append(Transfer("fetch", ts[1], step, name, 1000,
                                          issue=rng.randint(0, step), complete=step))
        p = plan(g, *transfers)
        blocking, planned = blocking_and_planned(g, p, prof)
        assert blocking.total_seconds == pytest.approx(
            blocking.compute_seconds + blocking.transfer_seconds)
        assert planned.compute_seconds - 1e-12 <= planned.total_seconds
        assert planned.exposed_seconds <= planned.transfer_seconds + 1e-12
        assert sum(dict(planned.channel_busy).values()) <= planned.transfer_seconds + 1e-12
