"""`python -m benchmarks async-ilp`: the exact planner's latency objective (issue #16).

For each zoo U-Net (benchmarks/models/*unet*, int8 .tflite and ONNX) and each budget
fraction of the tflm-greedy peak, two exact plans under the same budget:

- *blocking*: `--objective transfers` (least transfer time; every transfer blocks);
- *async*: `--objective latency` (least estimated end-to-end latency, fetches issued
  early and spills completing late over windows of up to `window` steps).

Both are checked, and both latencies come from planner/latency.py (the async plan as
planned, the blocking one as it is: all blocking). The acceptance: async <= blocking
everywhere, and strictly lower where a transfer can overlap compute (the async plan
moves data on a storage with a DMA channel). Figures are estimates from the profile.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

from planner.checker import assert_valid
from planner.device import DeviceProfile
from planner.errors import InfeasibleBudget
from planner.ir import Graph
from planner.kernels import apply_kernels
from planner.latency import end_to_end
from planner.plan import Plan
from planner.planners.base import Request, registry
from planner.planners.tflm_greedy import plan_tflm_greedy

ZOO = Path(__file__).parent / "models"
FRACTIONS = (0.75, 0.9)
# Strictly lower by more than rounding: the model works in whole microseconds.
STRICT_SECONDS = 1e-6
# The acceptance run (docs/planner.md's tables, tests/test_ilp_latency.py and
# tests/test_async_acceptance.py): CP-SAT deterministic work per solve, so the answers do not
# depend on the machine's load; the wall-clock limit is only a safety net.
ACCEPTANCE_WORK_LIMIT, ACCEPTANCE_TIME_LIMIT = 4.0, 120.0
ACCEPTANCE_COMMAND = (f"python -m benchmarks async-ilp --work-limit {ACCEPTANCE_WORK_LIMIT:g} "
                      f"--time-limit {ACCEPTANCE_TIME_LIMIT:g}")


@dataclass
class AsyncRow:
    model: str
    fraction: float
    budget_bytes: int
    compute_s: float
    blocking_s: float  # end-to-end latency of the transfers-optimal (blocking) plan
    async_s: float  # end-to-end latency of the latency-optimal plan
    async_bound_s: float | None  # the model's proven lower bound (where it has one)
    async_status: str
    blocking_peak: int
    async_peak: int
    windows: int  # transfers of the async plan with a window
    can_overlap: bool  # the async plan moves data on a DMA channel

    @property
    def proven_no_gain(self) -> bool:
        """The latency model's proven bound reaches the blocking plan's latency: no plan
        under the budget (windows up to the depth) overlaps a transfer to any gain. On one
        channel the model is a relaxation of the simulation (docs/planner.md), so this
        holds for the simulated figure too."""
        return self.async_bound_s is not None and \
            self.async_bound_s >= self.blocking_s - STRICT_SECONDS

    @property
    def ok(self) -> bool:
        """Issue #16: async <= blocking, and strictly lower wherever a transfer can
        overlap compute (a spill or fetch on a DMA channel has a free step beside it and
        the proof does not rule a gain out)."""
        if self.async_status == "infeasible":
            return True  # no plan fits the budget: nothing to compare
        if self.async_s > self.blocking_s + STRICT_SECONDS:
            return False
        if not self.can_overlap or self.proven_no_gain:
            return True
        return self.async_s < self.blocking_s - STRICT_SECONDS


def zoo_unets() -> list[Path]:
    return sorted([*ZOO.glob("*unet*_int8.tflite"), *ZOO.glob("*unet*.onnx")])


@dataclass
class AsyncCase:
    """One acceptance case with its plans: what the table row is computed from, kept for
    the tests that run the plans (tests/test_async_acceptance.py)."""

    path: Path
    graph: Graph  # the model on the profile's kernels, as both plans were made for it
    profile: DeviceProfile
    row: AsyncRow
    blocking: Plan | None  # None: no plan fits the budget
    fast: Plan | None


def solve_case(path: Path, fraction: float, profile: DeviceProfile, time_limit: float,
               work_limit: float | None, window: int = 3) -> AsyncCase:
    """Both exact plans of one model at `fraction` of tflm-greedy's peak, checked."""
    from frontends import load_model

    graph = apply_kernels(load_model(path), profile)
    greedy = plan_tflm_greedy(Request(graph, profile)).peak_bytes
    budget = int(greedy * fraction) // 16 * 16
    ilp = registry()["ilp"]

    def plan(objective: str) -> Plan:
        req = Request(graph, profile, budget, objective, time_limit,
                      deterministic=work_limit is not None, work_limit=work_limit,
                      async_window=window)
        p = ilp(req)
        assert_valid(graph, p, profile.capacities)
        return p

    try:
        blocking = plan("transfers")
    except InfeasibleBudget:  # below what any plan reaches: nothing to compare
        row = AsyncRow(path.name, fraction, budget, 0.0, 0.0, 0.0, None, "infeasible", 0, 0,
                       0, False)
        return AsyncCase(path, graph, profile, row, None, None)
    fast = plan("latency")
    lat_b, lat_a = end_to_end(graph, blocking, profile), end_to_end(graph, fast, profile)
    bound = next((float(n.split("latency bound ")[1].split(" ")[0]) for n in fast.notes
                  if "latency bound " in n), None)
    row = AsyncRow(
        model=path.name, fraction=fraction, budget_bytes=budget,
        compute_s=lat_a.compute_seconds, blocking_s=lat_b.total_seconds,
        async_s=lat_a.total_seconds, async_bound_s=bound, async_status=fast.status,
        blocking_peak=blocking.peak_bytes, async_peak=fast.peak_bytes,
        windows=sum(1 for t in fast.transfers if t.window != (t.step, t.step)),
        can_overlap=has_room(blocking, profile),
    )
    return AsyncCase(path, graph, profile, row, blocking, fast)


def run_one(path: Path, fraction: float, profile: DeviceProfile, time_limit: float,
            work_limit: float | None, window: int = 3) -> AsyncRow:
    return solve_case(path, fraction, profile, time_limit, work_limit, window).row


def has_room(plan, profile: DeviceProfile) -> bool:
    """Whether a transfer of `plan` could overlap an op: a spill or fetch on a DMA storage
    with a step between it and the tensor's neighbouring use (the arena may still forbid
    holding the buffer there; the exact planner then proves the blocking plan optimal)."""
    dma = {s.name for s in profile.storages if s.async_channel}
    for t in plan.transfers:
        if t.storage not in dma:
            continue
        if t.kind == "spill":
            reads = [u.step for u in plan.transfers if (u.tensor, u.part) == (t.tensor, t.part)
                     and u.kind in ("fetch", "stream") and u.step > t.step]
            if reads and min(reads) > t.step + 1:
                return True
        if t.kind == "fetch":
            before = [s.last for s in plan.segments_of(t.tensor, t.part) if s.last < t.step]
            if before and max(before) < t.step - 1:
                return True
    return False


def verdict(r: AsyncRow) -> str:
    if r.async_status == "infeasible":
        return "no plan fits"
    if not r.ok:
        return "NO"
    if r.async_s < r.blocking_s - STRICT_SECONDS:
        return "yes: lower"
    return "yes: equal, proven (no overlap fits)" if r.can_overlap else \
        "yes: equal (no transfer has room)"


def table(rows: list[AsyncRow]) -> str:
    head = ("| model | budget | compute ms | blocking ms | async ms | bound ms | windows | "
            "status | ok |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        if r.async_status == "infeasible":
            lines.append(f"| {r.model} | {r.fraction:.0%} ({r.budget_bytes:,} B) | - | - | - "
                         f"| - | - | infeasible | {verdict(r)} |")
            continue
        bound = f"{r.async_bound_s * 1e3:.3f}" if r.async_bound_s is not None else "-"
        lines.append(f"| {r.model} | {r.fraction:.0%} ({r.budget_bytes:,} B) | "
                     f"{r.compute_s * 1e3:.3f} | {r.blocking_s * 1e3:.3f} | "
                     f"{r.async_s * 1e3:.3f} | {bound} | {r.windows} | {r.async_status} | "
                     f"{verdict(r)} |")
    return head + "\n".join(lines) + "\n"


def write_csv(rows: list[AsyncRow], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*asdict(rows[0]), "ok"])
        w.writeheader()
        for r in rows:
            w.writerow({**asdict(r), "ok": r.ok})
