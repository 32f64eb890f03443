"""Run a tinyplan entry point with planners that wait for Ctrl-C, for the SIGINT tests.

`python tests/helpers/slow_planners.py planner|benchmarks ARGS...` registers:

- `slow-ilp`: like the exact planner on SIGINT: it keeps searching until Ctrl-C, then
  returns its best plan (tflm-greedy's) marked interrupted, with the time-limit note a
  stopped CP-SAT search also carries (which the CLI must not repeat);
- `slow-heuristic`: sleeps and lets KeyboardInterrupt propagate, as a heuristic does;
- `slow-budgets`: fast without a budget, waits under any budget (benchmark runner);
- and, with TINYPLAN_SLOW_ILP_AFTER=N, replaces `ilp` so that solves after the N-th wait.

Each prints `searching` on stderr when it starts to wait, so a test knows when to send
SIGINT.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from planner.planners.base import register, registry  # noqa: E402
from planner.stopping import INTERRUPTED_NOTE  # noqa: E402

real = registry()


def _wait() -> None:
    print("searching", file=sys.stderr, flush=True)
    while True:
        time.sleep(0.05)


@register("slow-ilp")
def slow_ilp(request):
    best = real["tflm-greedy"](request)
    try:
        _wait()
    except KeyboardInterrupt:
        return replace(best, planner="slow-ilp", status="feasible", stopped="interrupted",
                       notes=("time limit reached: peak not proven optimal", INTERRUPTED_NOTE))


@register("slow-heuristic")
def slow_heuristic(request):
    _wait()


@register("slow-budgets")
def slow_budgets(request):
    if request.budget is None:
        return replace(real["tflm-greedy"](request), planner="slow-budgets")
    _wait()


if "TINYPLAN_SLOW_ILP_AFTER" in os.environ:
    calls = {"n": 0}
    limit = int(os.environ["TINYPLAN_SLOW_ILP_AFTER"])

    @register("ilp")
    def counting_ilp(request):
        calls["n"] += 1
        if calls["n"] > limit:
            _wait()
        return real["ilp"](request)


if __name__ == "__main__":
    which, args = sys.argv[1], sys.argv[2:]
    sys.argv = [which, *args]
    if which == "planner":
        from planner.cli import main
    else:
        from benchmarks.__main__ import main
    sys.exit(main(args))
