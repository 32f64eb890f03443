"""Writers of what a device or a person uses, all reading one checked plan."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from planner.atomic import same_file, write_text_atomic
from planner.device import DeviceProfile
from planner.errors import PlannerError
from planner.ir import Graph
from planner.plan import Plan
from planner.plan_check import check_plan_for, stamp_plan
from planner.units import INT32_MAX

# emit name -> (module, function); each writer(graph, plan, model_path, outdir, **ctx) -> [paths]
WRITERS = {
    "tflite": ("backends.tflite.offline", "write_offline_tflite"),
    "shim": ("backends.tflite.shim_header", "write_shim_header"),
    "c": ("backends.c.glue", "write_c_glue"),
    "svg": ("backends.reports.svg", "write_layout_svg"),
}
# What each input format can get (the .tflite writers need the TFLite file and its order).
EMITS_FOR = {"tflite": ("tflite", "shim", "c", "svg"), "onnx": ("c", "svg")}
# Written with every -o, whatever --emit says: the reports a person reads.
REPORTS = {
    "report": ("backends.reports.tensors", "write_tensor_report"),
    "html": ("backends.reports.html", "write_html_report"),
}


def default_emits(source_format: Graph | str) -> list[str]:
    """TFLite input gets everything a TFLM project uses; ONNX the plan, a picture (+ --emit c)."""
    fmt = source_format if isinstance(source_format, str) else source_format.source_format
    return ["tflite", "shim", "c", "svg"] if fmt == "tflite" else ["svg"]


def check_emits(source_format: str, emits: Iterable[str] | None) -> list[str]:
    """The emits to write for this input format; a bad or impossible one raises at once."""
    if emits is None:
        return default_emits(source_format)
    allowed = EMITS_FOR.get(source_format, ())
    for emit in emits:
        if emit not in WRITERS:
            raise PlannerError(f"unknown --emit '{emit}': use one of {', '.join(WRITERS)}")
        if emit not in allowed:
            raise PlannerError(f"--emit {emit} needs a .tflite model; {source_format.upper()} "
                               f"input can get: {', '.join(allowed)}")
    return list(dict.fromkeys(emits))


def plan_json(graph: Graph, plan: Plan) -> dict:
    """plan.json: the plan plus the tensors' names and shapes (a plan names what it places)."""
    from backends.reports.tensors import tensor_table

    return {**plan.to_json(), "tensors": tensor_table(graph)}


def write_outputs(
    graph: Graph,
    plan: Plan,
    model_path: Path,
    outdir: str | Path | None,
    emits: Iterable[str] | None = None,
    svg: str | None = None,
    budget: int | None = None,
    profile: DeviceProfile | None = None,
) -> list[Path]:
    """Write plan.json, the reports and the chosen backends' files; all of them or none.

    Every file is first written into a staging folder inside OUTDIR and renamed into
    place only once every writer has succeeded, so a failing writer (or Ctrl-C) leaves no
    plan.json without its .tflite. No output may name an input (the model).
    """
    if plan.model_sha256 is not None:  # a plan read back: it must be this model's
        check_plan_for(plan, model_path, profile)
    if profile is not None:
        plan = stamp_plan(plan, model_path, profile)  # run and readers check it
    if plan.peak_bytes > INT32_MAX or any(s.end > INT32_MAX for s in plan.segments):
        raise PlannerError(f"the plan's arena ({plan.peak_bytes:,} B) exceeds int32, "
                           "what TFLite's offline array stores: nothing written")
    if emits is None and plan.stream_groups:
        # The C glue's plan tables cannot replay a streamed group (it runs inside TFLM only,
        # as TinyPlanStreamedGroup): by default such a plan gets everything else.
        emits = [e for e in default_emits(graph.source_format) if e != "c"]
    emits = check_emits(graph.source_format, emits) if outdir is not None else []
    if svg is not None:
        _refuse_input(Path(svg), model_path, "--svg")
    written: list[Path] = []
    if outdir is not None:
        written += _write_staged(graph, plan, model_path, Path(outdir), emits, budget, profile)
    if svg is not None:
        from backends.reports.svg import render_layout_svg

        write_text_atomic(svg, render_layout_svg(graph, plan, budget=budget))
        written.append(Path(svg))
    return written


def _refuse_input(path: Path, model_path: Path, what: str) -> None:
    if same_file(path, model_path):
        raise PlannerError(f"{what} {path} names the input model: refusing to overwrite it")


def _write_staged(graph: Graph, plan: Plan, model_path: Path, out: Path, emits: list[str],
                  budget: int | None, profile: DeviceProfile | None) -> list[Path]:
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".tinyplan-", dir=out))
    except OSError as exc:
        raise PlannerError(f"cannot write into {out}: {exc.strerror or exc}") from None
    try:
        staged = [stage / "plan.json"]
        staged[0].write_text(json.dumps(plan_json(graph, plan), indent=1, allow_nan=False)
                             + "\n")
        for name in (*REPORTS, *emits):
            staged += _writer(name)(graph, plan, model_path, stage, budget=budget,
                                    profile=profile)
        finals = [out / p.relative_to(stage) for p in staged]
        for final in finals:
            _refuse_input(final, model_path, "output")
        for src, final in zip(staged, finals, strict=True):
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, final)
        return finals
    except OSError as exc:
        raise PlannerError(f"cannot write into {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _writer(emit: str):
    module, fn = WRITERS[emit] if emit in WRITERS else REPORTS[emit]
    try:
        return getattr(importlib.import_module(module), fn)
    except (ModuleNotFoundError, AttributeError):
        raise PlannerError(f"--emit {emit} is not available in this build") from None
