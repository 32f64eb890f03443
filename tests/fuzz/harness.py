"""What every fuzz test shares: the budget, and the contract a command must keep.

The contract (issue 14): exit code 0, 1 or 2; on 1 or 2 exactly one line on stderr;
never a traceback. Budgets are small so the whole suite runs in about two minutes in
CI; `TINYPLAN_FUZZ_LONG=N` multiplies every example count by N and lets Hypothesis
pick fresh random inputs (CI runs are derandomized: the same inputs every run).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Sequence

from hypothesis import HealthCheck, settings

LONG = max(1, int(os.environ.get("TINYPLAN_FUZZ_LONG", "1") or 1))


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples * LONG,
        deadline=None,
        derandomize=LONG == 1,
        database=None if LONG == 1 else settings.default.database,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.function_scoped_fixture,
                               HealthCheck.filter_too_much],
    )


def call_cli(main: Callable[[Sequence[str]], int], argv: Sequence[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of an in-process CLI call; argparse exits count too."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def assert_contract(code: int, err: str, argv: Sequence[str] = ()) -> None:
    where = f"argv={list(argv)!r}"
    assert code in (0, 1, 2), f"exit {code}: {err[-500:]!r} {where}"
    assert "Traceback" not in err, f"{err[-2000:]} {where}"
    if code != 0:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1, f"exit {code} with {len(lines)} stderr lines: {err!r} {where}"
