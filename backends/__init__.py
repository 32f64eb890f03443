"""Writers of what a device or a person uses, all reading one checked plan."""

from __future__ import annotations

import importlib
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
    "tflite": ("backends.tflite_offline", "write_offline_tflite"),
    "shim": ("backends.shim_header", "write_shim_header"),
    "c": ("backends.c_glue", "write_c_glue"),
    "svg": ("backends.svg", "write_layout_svg"),
}


def default_emits(graph: Graph) -> list[str]:
    """TFLite input gets everything a TFLM project uses; ONNX the plan, a picture (+ --emit c)."""
    return ["tflite", "shim", "c", "svg"] if graph.source_format == "tflite" else ["svg"]


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
    """Write plan.json and the chosen backends' files; all of them or none.

    Every file is first written into a staging folder inside OUTDIR and renamed into
    place only once every writer has succeeded, so a failing writer leaves no
    plan.json without its .tflite. No output may name an input (the model).
    """
    if plan.model_sha256 is not None:  # a plan read back: it must be this model's
        check_plan_for(plan, model_path, profile)
    if profile is not None:
        plan = stamp_plan(plan, model_path, profile)  # run and readers check it
    if plan.peak_bytes > INT32_MAX or any(s.end > INT32_MAX for s in plan.segments):
        raise PlannerError(f"the plan's arena ({plan.peak_bytes:,} B) exceeds int32, "
                           "what TFLite's offline array stores: nothing written")
    emits = list(emits) if emits is not None else (default_emits(graph) if outdir else [])
    for emit in emits:
        if emit not in WRITERS:
            raise PlannerError(f"unknown --emit '{emit}': use one of {', '.join(WRITERS)}")
        if emit == "tflite" and graph.source_format != "tflite":
            raise PlannerError("--emit tflite needs a .tflite model; ONNX gets plan.json and C")
    if svg is not None:
        _refuse_input(Path(svg), model_path, "--svg")
    written: list[Path] = []
    if outdir is not None:
        written += _write_staged(graph, plan, model_path, Path(outdir), emits, budget, profile)
    if svg is not None:
        from .svg import render_layout_svg

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
        plan.save(staged[0])
        for emit in emits:
            staged += _writer(emit)(graph, plan, model_path, stage, budget=budget,
                                    profile=profile)
        finals = [out / p.relative_to(stage) for p in staged]
        for final in finals:
            _refuse_input(final, model_path, "output")
        for src, final in zip(staged, finals, strict=True):
            os.replace(src, final)
        return finals
    except OSError as exc:
        raise PlannerError(f"cannot write into {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _writer(emit: str):
    module, fn = WRITERS[emit]
    try:
        return getattr(importlib.import_module(module), fn)
    except (ModuleNotFoundError, AttributeError):
        raise PlannerError(f"--emit {emit} is not available in this build") from None
