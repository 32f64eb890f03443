"""In-flight windows of asynchronous transfers, as the arena machine runs them.

A plan's asynchronous transfer has a window of steps in flight (planner/plan.py,
Transfer.window). The arena machine (backends/executor/__init__.py) hands its spills and fetches
here when any transfer of the plan has a window longer than one step, and they move
their data at the *latest* moment the window allows, the worst case a device's DMA can
produce:

- a spill issued after the op at `step` reads its source bytes from the arena only after
  the op at `complete` ran, so a source segment that ends (and is poisoned) or is
  overwritten inside the window spills wrong data and the later fetch brings it back;
- a fetch completing before the op at `step` poisons its destination before the op at
  `issue` and fills it only before the op at `step`, so a reader of the destination
  inside the window reads poison.

Either shows up as wrong numbers against the whole-model reference. What the arena
cannot show is refused (ExecutionError): a fetch whose window starts before its spill
completes (it would read storage not yet written), a fetch with no segment holding its
whole window, a window that ends before it starts.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from planner.plan import Segment, Transfer

if TYPE_CHECKING:
    from backends.executor import ArenaMachine


def _window(tr: Transfer) -> tuple[int, int]:
    return tr.window


class InFlight:
    """Spill and fetch phases of one ArenaMachine run with the plan's windows."""

    def __init__(self, machine: ArenaMachine):
        from backends.executor.common import ExecutionError

        self.m = machine
        self.error = ExecutionError
        self.spill_issue: dict[int, list[Transfer]] = defaultdict(list)
        self.spill_done: dict[int, list[Transfer]] = defaultdict(list)
        self.fetch_issue: dict[int, list[Transfer]] = defaultdict(list)
        self.fetch_done: dict[int, list[Transfer]] = defaultdict(list)
        self.dest: dict[Transfer, Segment] = {}
        spill_end: dict[tuple[int, int | None], int] = {}
        for tr in machine.plan.transfers:
            first, last = _window(tr)
            if first > last:
                raise ExecutionError(f"{tr.kind} of tensor {tr.tensor} at step {tr.step}: "
                                     f"window [{first}, {last}] ends before it starts")
            if tr.kind == "spill":
                if first != tr.step:
                    raise ExecutionError(f"spill of tensor {tr.tensor} at step {tr.step} is "
                                         f"issued at step {first}, not after its own op")
                self.spill_issue[first].append(tr)
                self.spill_done[last].append(tr)
                spill_end[(tr.tensor, tr.part)] = last
            elif tr.kind == "fetch":
                if last != tr.step:
                    raise ExecutionError(f"fetch of tensor {tr.tensor} at step {tr.step} "
                                         f"completes at step {last}, not before its use")
                # Nothing runs before step 1: an issue at 0 is an issue before op 1.
                self.fetch_issue[max(first, 1)].append(tr)
                self.fetch_done[last].append(tr)
                self.dest[tr] = self._destination(tr)
        for tr in machine.plan.transfers:
            end = spill_end.get((tr.tensor, tr.part))
            if tr.kind in ("fetch", "stream") and end is not None and _window(tr)[0] <= end:
                raise ExecutionError(
                    f"{tr.kind} of tensor {tr.tensor} at step {tr.step} is issued at step "
                    f"{_window(tr)[0]}, before its spill completes at step {end}")
        self.started = 0  # transfers with a window longer than one step
        self.in_flight: set[Transfer] = set()

    def _destination(self, tr: Transfer) -> Segment:
        first, last = _window(tr)
        for s in self.m.segs.get((tr.tensor, tr.part), ()):
            if s.first <= first and last <= s.last:
                return s
        raise self.error(f"fetch of tensor {tr.tensor} at step {tr.step}: no segment holds "
                         f"its window [{first}, {last}]")

    def _poison(self, seg: Segment) -> None:
        end = min(seg.end, self.m.arena.size)
        self.m.arena[seg.offset:end] = self.m.pattern[seg.offset:end]

    def before_op(self, step: int) -> None:
        """Fetches issued now (destination poisoned) and completing now (filled)."""
        for tr in self.fetch_issue.get(step, ()):
            self._poison(self.dest[tr])
            if _window(tr)[0] < _window(tr)[1]:
                self.started += 1
            self.in_flight.add(tr)
        for tr in self.fetch_done.get(step, ()):
            self.in_flight.discard(tr)
            seg = self.dest[tr]
            # The fetch's own address, as a device runtime would use it.
            data = self.m.storages[tr.storage].read(
                tr.address, self.m._part_nbytes(tr.tensor, tr.part))
            self.m._put(seg.offset, data, seg.size)

    def after_op(self, step: int) -> None:
        """Spills issued now (nothing read yet) and completing now (source read now)."""
        for tr in self.spill_issue.get(step, ()):
            if _window(tr)[0] < _window(tr)[1]:
                self.started += 1
            self.in_flight.add(tr)
        for tr in self.spill_done.get(step, ()):
            self.in_flight.discard(tr)
            # The source as the arena holds it at completion, at the offsets it had when
            # the spill was issued: a DMA reads those bytes, whatever they hold by now.
            data = self.m.read_part(tr.tensor, tr.part, tr.step)
            if data.nbytes != tr.nbytes:
                raise self.error(f"spill of tensor {tr.tensor}: {tr.nbytes} B planned, "
                                 f"{data.nbytes} B resident")
            self.m.storages[tr.storage].write(tr.address, data.tobytes())
