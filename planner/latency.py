"""End-to-end latency of a plan: the one evaluator every report's latency figure comes from.

An event simulation of one inference on the device the profile describes. Durations
are estimates: op times from planner/compute.py, transfer times from planner/costs.py.

Rules (docs/planner.md "Timing model" states the same):

- The processor runs the ops in order; the op at step k > 0 takes op_seconds[k - 1].
- Every storage has one channel that carries one transfer at a time. Requests are
  served in issue order among those ready (FIFO by issue); a transfer never preempts.
- A *blocking* transfer (window (step, step)) stalls the processor from its issue
  until it is done, waiting for the channel first. On a storage without a DMA channel
  (`async = false`) every transfer is blocking: the processor moves the bytes itself.
- An *asynchronous* transfer (Transfer.window wider than its step, on an async storage)
  starts when issued and its channel is free; the processor goes on. A fetch completing
  before the op at `step` is issued before the op at `issue`, and that op at `step`
  waits for it; a spill issued after the op at `step` must be done before the op at
  `complete + 1` (its source buffer is reused from there) or by the end of the inference.
- Streams and spill_rows stay blocking for the plan but are double-buffered inside
  their op on an async storage: the op ends when both its compute and its row
  transfers are done. Without a DMA channel their time adds to the op's.
- Erase: a spill's erase time (costs.erase_seconds) holds the channel when the
  storage's `erase_blocks_bus` is true (reads queue behind it); otherwise the chip
  erases on its own as soon as the spill is issued (one erase at a time) and only the
  write holds the channel, so reads issued meanwhile may go first.
- Order at step k: wait for spills completing at k - 1; blocking fetches at k; issue
  the async fetches issued at k; wait for async fetches completing at k; the op (with
  its streams); blocking spills at k; issue the async spills issued at k.

`total - compute` is the exposed transfer time: what the processor spent waiting.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .compute import op_seconds
from .costs import erase_seconds, transfer_time
from .device import DeviceProfile, Storage
from .ir import Graph
from .plan import Plan, Transfer


@dataclass(frozen=True)
class Latency:
    total_seconds: float
    compute_seconds: float
    exposed_seconds: float  # total - compute: the processor waiting on transfers
    transfer_seconds: float  # every transfer's duration summed (the blocking-sum figure)
    # (storage name, seconds its channel was busy), in profile order.
    channel_busy: tuple[tuple[str, float], ...] = ()
    # Start time of the op at each step (step 0 has no op: 0.0).
    step_start: tuple[float, ...] = field(default=(), repr=False)

    @property
    def hidden_seconds(self) -> float:
        """Transfer time that ran beside compute."""
        return max(self.transfer_seconds - self.exposed_seconds, 0.0)

    def to_json(self) -> dict:
        return {"total_seconds": self.total_seconds, "compute_seconds": self.compute_seconds,
                "exposed_transfer_seconds": self.exposed_seconds,
                "transfer_seconds": self.transfer_seconds,
                "channel_busy_seconds": dict(self.channel_busy)}


def without_windows(plan: Plan) -> Plan:
    """The same plan with every transfer blocking."""
    return replace(plan, transfers=tuple(replace(t, issue=None, complete=None)
                                         for t in plan.transfers))


def is_async(t: Transfer, storage: Storage) -> bool:
    """Whether `t` runs beside the processor: a window wider than its step on a DMA channel."""
    return storage.async_channel and t.kind in ("spill", "fetch") and t.window != (t.step, t.step)


@dataclass
class _Request:
    seq: int
    ready: float  # when the channel may start it (issue, or the end of a background erase)
    duration: float  # channel time
    done: float | None = None


@dataclass
class _Channel:
    storage: Storage
    bus_free: float = 0.0
    erase_free: float = 0.0
    busy: float = 0.0
    pending: list[_Request] = field(default_factory=list)

    def serve_next(self) -> None:
        """Start the next request: among those ready when the channel frees, the first issued."""
        now = max(self.bus_free, min(r.ready for r in self.pending))
        req = min((r for r in self.pending if r.ready <= now), key=lambda r: r.seq)
        self.pending.remove(req)
        req.done = now + req.duration
        self.bus_free = req.done
        self.busy += req.duration

    def wait(self, req: _Request) -> float:
        # Exact although lazy: a request issued later is ready later than any decision
        # made here, and nothing is issued while the processor waits.
        while req.done is None:
            self.serve_next()
        return req.done


class _Sim:
    def __init__(self, graph: Graph, profile: DeviceProfile):
        self.graph, self.profile = graph, profile
        self.channels = {s.name: _Channel(s) for s in profile.storages}
        self.seq = 0
        self.total_transfer = 0.0

    def issue(self, t: Transfer, now: float) -> _Request:
        ch = self.channels.get(t.storage)
        if ch is None:
            ch = self.channels[t.storage] = _Channel(self.profile.storage(t.storage))
        dur = transfer_time(self.graph, t, self.profile)
        self.total_transfer += dur
        self.seq += 1
        erase = erase_seconds(ch.storage, t.nbytes) if t.kind == "spill" else 0.0
        if erase > 0 and ch.storage.async_channel and not ch.storage.erase_blocks_bus:
            start = max(now, ch.erase_free)
            ch.erase_free = start + erase
            req = _Request(self.seq, ch.erase_free, dur - erase)
        else:
            req = _Request(self.seq, now, dur)
        ch.pending.append(req)
        return req

    def wait(self, t: Transfer, req: _Request) -> float:
        return self.channels[t.storage].wait(req)


def end_to_end(graph: Graph, plan: Plan, profile: DeviceProfile,
               op_times: tuple[float, ...] | None = None) -> Latency:
    """Estimated latency of one inference under `plan` (module docstring: the rules).

    `op_times`: compute.op_seconds(graph, profile), when the caller already has it.
    """
    if plan.num_steps != graph.num_steps:
        raise ValueError(f"plan has {plan.num_steps} steps, graph has {graph.num_steps}")
    ops = op_times if op_times is not None else op_seconds(graph, profile)
    sim = _Sim(graph, profile)
    storage = {s.name: s for s in profile.storages}

    def asynchronous(t: Transfer) -> bool:
        return is_async(t, storage.get(t.storage) or profile.storage(t.storage))

    at: dict[tuple[str, int], list[Transfer]] = {}
    for t in plan.transfers:
        a = asynchronous(t)
        if t.kind == "fetch":
            key = ("async_fetch", t.window[0]) if a else ("fetch", t.step)
        elif t.kind == "spill":
            key = ("async_spill", t.step) if a else ("spill", t.step)
        else:  # stream / spill_rows: inside the op at `step`
            key = ("rows", t.step)
        at.setdefault(key, []).append(t)

    inflight: dict[int, tuple[Transfer, _Request]] = {}  # id(transfer) -> request
    now = 0.0
    starts = [0.0] * plan.num_steps

    def settle(ts: list[Transfer], cpu: float) -> float:
        for t in ts:
            cpu = max(cpu, sim.wait(*inflight.pop(id(t))))
        return cpu

    spill_done: dict[int, list[Transfer]] = {}  # step c -> async spills completing at c
    fetch_due: dict[int, list[Transfer]] = {}  # step -> async fetches completing there
    for k in range(plan.num_steps):
        now = settle(spill_done.pop(k - 1, []), now)
        for t in at.get(("fetch", k), []):
            now = sim.wait(t, sim.issue(t, now))
        for t in at.get(("async_fetch", k), []):
            inflight[id(t)] = (t, sim.issue(t, now))
            fetch_due.setdefault(t.step, []).append(t)
        now = settle(fetch_due.pop(k, []), now)
        starts[k] = now
        compute = ops[k - 1] if k > 0 else 0.0
        rows = at.get(("rows", k), [])
        if rows:
            now = _run_with_rows(sim, rows, now, compute, storage, profile)
        else:
            now += compute
        for t in at.get(("spill", k), []):
            now = sim.wait(t, sim.issue(t, now))
        for t in at.get(("async_spill", k), []):
            inflight[id(t)] = (t, sim.issue(t, now))
            spill_done.setdefault(t.window[1], []).append(t)
    # Whatever is still in flight ends the inference when it lands.
    end = now
    for t, req in list(inflight.values()):
        end = max(end, sim.wait(t, req))
    compute_total = sum(ops)
    return Latency(
        total_seconds=end,
        compute_seconds=compute_total,
        exposed_seconds=max(end - compute_total, 0.0),
        transfer_seconds=sim.total_transfer,
        channel_busy=tuple((name, ch.busy) for name, ch in sim.channels.items()),
        step_start=tuple(starts),
    )


def _run_with_rows(sim: _Sim, rows: list[Transfer], now: float, compute: float,
                   storage: dict[str, Storage], profile: DeviceProfile) -> float:
    """An op that streams rows: double-buffered beside compute where a DMA channel exists."""
    overlapped: list[tuple[Transfer, _Request]] = []
    for t in rows:
        s = storage.get(t.storage) or profile.storage(t.storage)
        if s.async_channel:
            overlapped.append((t, sim.issue(t, now)))
        else:
            now = sim.wait(t, sim.issue(t, now))  # the processor moves the rows itself
    end = now + compute
    for t, req in overlapped:
        end = max(end, sim.wait(t, req))
    return end


def blocking_and_planned(graph: Graph, plan: Plan, profile: DeviceProfile
                         ) -> tuple[Latency, Latency]:
    """(every transfer blocking, as planned): the two figures reports show side by side."""
    return end_to_end(graph, without_windows(plan), profile), end_to_end(graph, plan, profile)


def latency_fields(graph: Graph, plan: Plan, profile: DeviceProfile) -> dict:
    """The latency figures `solve --json` and the benchmark rows report (seconds)."""
    blocking, planned = blocking_and_planned(graph, plan, profile)
    return {"est_latency_seconds": planned.total_seconds,
            "est_latency_blocking_seconds": blocking.total_seconds,
            "latency": planned.to_json()}
