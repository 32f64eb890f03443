"""`python -m benchmarks run|minimalloc|scale|pareto|async-ilp`: the benchmark suites, the
MiniMalloc problems, the exact planner at scale, the Pareto sweep with row streaming off
and on, and the latency objective against blocking transfers."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from planner.errors import PlannerError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


DATA_HELP = ("the shared data folder (models/, minimalloc/); default: ../shared next to a "
             "checkout, else only the bundled zoo")


def build_parser() -> argparse.ArgumentParser:
    from planner.cli import HelpFormatter
    from planner.version import __version__

    parser = _Parser(prog="python -m benchmarks", description=__doc__,
                     formatter_class=HelpFormatter,
                     epilog="exit codes: 0 done, 1 invalid or crashed plans, 2 bad input or no "
                     "data, 130 interrupted (the tables of what finished are still written)")
    parser.add_argument("--version", action="version", version=f"tinyplan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="plan every model x budget x planner; CSV, Markdown, SVG",
                         formatter_class=HelpFormatter)
    run.add_argument("--suite", choices=("quick", "full"), default="quick",
                     help="quick: the zoo and three shared models, short limits; full: every "
                     "model, SRAM budgets, 30 s limits")
    run.add_argument("--data", metavar="DIR", default=None, help=DATA_HELP)
    run.add_argument("--jobs", type=int, default=None,
                     help="worker processes (default: min(2, CPUs))")
    run.add_argument("--scheduler", metavar="ADDRESS", default=None,
                     help="send the tasks to this dask.distributed scheduler (tcp://HOST:PORT) "
                     "instead of the local process pool")
    run.add_argument("-o", "--outdir", default="bench-out",
                     help="results.csv, report.md and the pictures go here")
    run.add_argument("--models", action="append", default=None, metavar="TEXT",
                     help="only models whose file name contains TEXT (repeatable)")
    run.add_argument("--planners", help="comma-separated planner names (default: all)")
    run.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                     help="per exact solve (default: the suite's, 5 s quick, 30 s full)")
    run.add_argument("--profile", default=None, help="device profile the spilling planners use")
    run.add_argument("--no-minimalloc", action="store_true", help="skip the MiniMalloc set")
    run.add_argument("--no-svg", action="store_true", help="write no pictures")
    run.add_argument("--update-readme", metavar="README",
                     help="replace the block between the benchmark:headline markers in "
                          "README with the headline tables")
    run.set_defaults(func=cmd_run)
    mm = sub.add_parser("minimalloc", help="MiniMalloc CSV problems through the offset planners",
                        formatter_class=HelpFormatter)
    mm.add_argument("paths", nargs="*", help="problem CSVs (default: DATA/minimalloc)")
    mm.add_argument("--data", metavar="DIR", default=None, help=DATA_HELP)
    mm.add_argument("--planners", help="comma-separated (default: all offset planners)")
    mm.add_argument("--time-limit", type=float, default=10.0, metavar="SECONDS",
                    help="per searching planner and problem")
    mm.add_argument("--csv", help="also write the rows to this CSV file")
    mm.add_argument("--models", action="store_true",
                    help="also plan every zoo and shared model spill-free with the canonical "
                         "search and with CP-SAT, and compare the peaks")
    mm.set_defaults(func=cmd_minimalloc)
    sc = sub.add_parser("scale", help="the exact planner on residual U-Nets of 250-2000 ops",
                        formatter_class=HelpFormatter)
    sc.add_argument("--sizes", default="250,500,1000,2000",
                    help="comma-separated op counts (default 250,500,1000,2000)")
    sc.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                    help="wall-clock limit per solve (default 60 s, 120 s above 1000 ops)")
    sc.add_argument("--work-limit", type=float, default=None, metavar="UNITS",
                    help="CP-SAT deterministic seconds per solve "
                         "(default 0.02 per second of the time limit)")
    sc.add_argument("--budget-fraction", type=float, default=None, metavar="F",
                    help="plan under F x the tflm-greedy peak (default: no budget)")
    sc.add_argument("--full-res-blocks", action="store_true",
                    help="residual blocks at full resolution too (fusion alone then reaches "
                         "the working-set bound)")
    sc.add_argument("--format", choices=("tflite", "onnx"), default="tflite",
                    help="int8 NHWC .tflite graphs (fusion and streaming apply) or the "
                         "float32 ONNX twins (spill only; no kernel fuses float NCHW)")
    sc.add_argument("--no-repeat", action="store_true", help="solve once, skip the same-plan "
                    "check")
    sc.add_argument("-o", "--outdir", default="bench-out/scale",
                    help="where the generated models, scale.csv and scale.md go")
    sc.set_defaults(func=cmd_scale)
    pa = sub.add_parser("pareto", help="peak vs estimated time of the exact planner with row "
                        "streaming off and on (the zoo's int8 U-Nets)",
                        formatter_class=HelpFormatter)
    pa.add_argument("--models", action="append", default=None, metavar="TEXT",
                    help="zoo .tflite models whose file name contains TEXT (repeatable; default "
                    "tiny_unet, unet_wide96, mbv2_unet int8)")
    pa.add_argument("--profile", default="qspi-flash", help="device profile (needs a storage)")
    pa.add_argument("--points", type=int, default=6, help="budgets per sweep (>= 2)")
    pa.add_argument("--time-limit", type=float, default=20.0, metavar="SECONDS",
                    help="per solve (reproducible work limit: 0.02 units per second)")
    pa.add_argument("-o", "--outdir", default="bench-out/pareto",
                    help="pareto_streaming.csv, .md and one SVG per model go here")
    pa.set_defaults(func=cmd_pareto)
    from .async_ilp import ACCEPTANCE_COMMAND

    al = sub.add_parser("async-ilp", help="latency objective vs blocking transfers on the zoo "
                        "U-Nets (issue #16)", formatter_class=HelpFormatter,
                        description="Per zoo U-Net and budget, the exact planner's blocking "
                        "plan (--objective transfers) against its async one (--objective "
                        "latency), both checked and simulated by planner/latency.py "
                        "(estimates from the profile, not measurements).",
                        epilog=f"issue #16's acceptance table (docs/planner.md): "
                        f"{ACCEPTANCE_COMMAND}")
    al.add_argument("--models", action="append", default=None, metavar="TEXT",
                    help="only zoo U-Nets whose file name contains TEXT (repeatable)")
    al.add_argument("--fractions", default="0.75,0.9",
                    help="budgets as fractions of the tflm-greedy peak (default 0.75,0.9)")
    al.add_argument("--profile", default="qspi-flash", help="device profile")
    al.add_argument("--time-limit", type=float, default=20.0, metavar="SECONDS",
                    help="wall-clock limit per exact solve (default 20)")
    al.add_argument("--work-limit", type=float, default=None, metavar="UNITS",
                    help="CP-SAT deterministic seconds per solve (reproducible; default none)")
    al.add_argument("--async-window", type=int, default=3, metavar="STEPS",
                    help="transfer window depth of the latency model (default 3)")
    al.add_argument("-o", "--outdir", default="bench-out/async-ilp",
                    help="async_ilp.csv and async_ilp.md go here")
    al.set_defaults(func=cmd_async_ilp)
    return parser


def cmd_pareto(args: argparse.Namespace) -> int:
    from .pareto_stream import run_pareto

    if args.points < 2:
        raise PlannerError("--points must be at least 2")
    if args.time_limit <= 0:
        raise PlannerError("--time-limit must be positive")
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in args.argv)
    for path in run_pareto(args.models, Path(args.outdir), args.profile, args.points,
                           args.time_limit, command):
        print(f"wrote {path}")
    return 0


def cmd_async_ilp(args: argparse.Namespace) -> int:
    from planner.device import load_profile

    from .async_ilp import run_one, table, write_csv, zoo_unets

    try:
        fractions = [float(x) for x in args.fractions.split(",") if x.strip()]
    except ValueError:
        raise PlannerError(f"--fractions: not a list of numbers: {args.fractions}") from None
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise PlannerError("--fractions must be numbers in (0, 1]")
    if args.time_limit <= 0 or (args.work_limit is not None and args.work_limit <= 0):
        raise PlannerError("--time-limit and --work-limit must be positive")
    paths = [p for p in zoo_unets() if not args.models or any(m in p.name for m in args.models)]
    if not paths:
        raise PlannerError("no zoo U-Net matches --models")
    profile = load_profile(args.profile)
    rows = []
    for path in paths:
        for fraction in fractions:
            rows.append(run_one(path, fraction, profile, args.time_limit, args.work_limit,
                                args.async_window))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    out = Path(args.outdir)
    write_csv(rows, out / "async_ilp.csv")
    (out / "async_ilp.md").write_text(table(rows))
    print("\n" + table(rows), end="")
    return 0 if all(r.ok for r in rows) else 1


def cmd_scale(args: argparse.Namespace) -> int:
    from .scale import run_scale

    try:
        sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    except ValueError:
        raise PlannerError(f"--sizes: not a list of op counts: {args.sizes}") from None
    for value, name in ((args.time_limit, "--time-limit"), (args.work_limit, "--work-limit")):
        if value is not None and value <= 0:
            raise PlannerError(f"{name} must be positive")
    rows = run_scale(sizes, Path(args.outdir), args.time_limit, args.work_limit,
                     not args.no_repeat, args.budget_fraction,
                     top_blocks=None if args.full_res_blocks else 0, fmt=args.format)
    return 0 if all(r.not_worse for r in rows) else 1


def cmd_run(args: argparse.Namespace) -> int:
    from .report import read_readme, update_readme, write_all
    from .runner import default_jobs, run_suite, shared_dir, suite_named

    readme = Path(args.update_readme) if args.update_readme else None
    if readme is not None:
        read_readme(readme)  # refuse before minutes of planning, not after
    data = shared_dir(args.data)
    suite = suite_named(args.suite, data)
    if not suite.models:
        raise PlannerError("no benchmark models found (the bundled zoo is missing from this "
                           "install): pass --data DIR with the shared models/")
    if data is None:
        print("note: no shared data (../shared next to a checkout, or --data DIR): only the "
              "bundled zoo, no MiniMalloc problems", file=sys.stderr)
    if args.models:
        suite = replace(suite, models=tuple(p for p in suite.models
                                            if any(m in p.name for m in args.models)))
        if not suite.models:
            raise PlannerError(f"no model matches {', '.join(args.models)}")
    if args.planners:
        suite = replace(suite, planners=tuple(p.strip() for p in args.planners.split(",")))
    if args.time_limit is not None:
        if args.time_limit <= 0:
            raise PlannerError("--time-limit must be positive")
        suite = replace(suite, time_limit=args.time_limit)
    if args.profile:
        from planner.device import load_profile

        load_profile(args.profile)  # fail now, in one line, not in every task
        suite = replace(suite, profile=args.profile)
    if args.no_minimalloc:
        suite = replace(suite, minimalloc=())
    if args.no_svg:
        suite = replace(suite, svg=False)
    jobs = args.jobs if args.jobs is not None else default_jobs()
    if not 1 <= jobs <= 256:
        raise PlannerError(f"--jobs must be 1..256, got {jobs}")
    outdir = Path(args.outdir)
    try:  # before an hour of solving, not after: -o naming a file is one line
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        what = "is a file, not a folder" if outdir.is_file() else (exc.strerror or str(exc))
        raise PlannerError(f"-o {outdir}: {what}") from None
    results = run_suite(suite, outdir, jobs, scheduler=args.scheduler)
    written = write_all(results, suite, outdir, jobs)
    if results.interrupted:
        print(f"interrupted: {len(results.rows)} rows from the tasks that finished; report "
              f"{written[-1]}", file=sys.stderr)
        return 130
    if not results.rows and not results.minimalloc:
        print(f"error: no rows: every model failed to load ({'; '.join(results.skipped)})",
              file=sys.stderr)
        return 2
    bad = [r for r in results.rows if r["status"] in ("invalid", "crash")]
    bad += [r for r in results.minimalloc if r["status"] == "invalid"]
    print(f"{len(results.rows)} rows from {len(suite.models)} model files in "
          f"{results.seconds:.0f} s; report {written[-1]}")
    if readme is not None:
        command = "python -m benchmarks " + shlex.join(getattr(args, "argv", ["run"]))
        update_readme(readme, results, suite, jobs, command)
        print(f"headline written to {readme}")
    if bad:
        print(f"{len(bad)} invalid or crashed plans: see {written[-1]}", file=sys.stderr)
    return 1 if bad else 0


def cmd_minimalloc(args: argparse.Namespace) -> int:
    from planner.atomic import same_file

    from .minimalloc import (
        below_capacity,
        markdown_table,
        models_table,
        problem_files,
        proofs_table,
        run_all,
        solvers,
        spill_free_models,
    )
    from .report import write_csv
    from .runner import shared_dir

    data = shared_dir(args.data)
    folder = data / "minimalloc" if data is not None else None
    paths = [Path(p) for p in args.paths] or (problem_files(folder) if folder else [])
    if not paths:
        where = folder or "no shared folder (none next to a checkout)"
        raise PlannerError(f"no MiniMalloc problems in {where}: pass CSV paths or "
                           "--data DIR (the folder that holds minimalloc/)")
    names = None
    if args.planners:
        names = [p.strip() for p in args.planners.split(",")]
        unknown = [n for n in names if n not in solvers()]
        if unknown:
            raise PlannerError(f"unknown offset planner(s) {', '.join(unknown)}: use "
                               f"{', '.join(solvers())}")
    if args.csv and any(same_file(args.csv, p) for p in paths):
        raise PlannerError(f"--csv {args.csv} names an input problem: refusing to overwrite it")
    from planner.progress import bar

    start = time.perf_counter()
    results, interrupted = [], False
    progress = bar(len(paths), "minimalloc", unit="problem")
    try:
        for path in paths:  # one problem at a time: progress, and Ctrl-C keeps the rest
            results += run_all([path], names, args.time_limit)
            progress.update(1)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
    if results:
        print(markdown_table(results), end="")
    if not interrupted and (names is None or "canonical" in names):
        print("\nBelow a tight capacity (load bound = capacity), capacity - 16 B:\n")
        print(proofs_table(below_capacity(paths, args.time_limit)), end="")
    if not interrupted and args.models:
        from .runner import zoo_models

        print("\nSpill-free plans of the zoo and shared models, canonical search vs CP-SAT:\n")
        print(models_table(spill_free_models(zoo_models(), args.time_limit)), end="")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{time.perf_counter() - start:.0f} s wall on {os.cpu_count()} cores, "
          f"load average {load:.1f} at the end")
    if args.csv:
        write_csv([r.row() for r in results], Path(args.csv),
                  list(type(results[0]).__dataclass_fields__) if results else None)
    if interrupted:
        print(f"interrupted: {len(results)} results from the problems that finished",
              file=sys.stderr)
        return 130
    return 1 if any(r.status == "invalid" for r in results) else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the README names the command that made its tables
    try:
        return int(args.func(args))
    except PlannerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
