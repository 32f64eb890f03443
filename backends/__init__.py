"""Writers of what a device or a person uses, all reading one checked plan."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path

from planner.device import DeviceProfile
from planner.errors import PlannerError
from planner.ir import Graph
from planner.plan import Plan

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
    written: list[Path] = []
    if outdir is not None:
        out = Path(outdir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PlannerError(f"cannot write into {out}: {exc.strerror}") from None
        plan_path = out / "plan.json"
        plan.save(plan_path)
        written.append(plan_path)
        for emit in emits if emits is not None else default_emits(graph):
            if emit not in WRITERS:
                raise PlannerError(f"unknown --emit '{emit}': use one of {', '.join(WRITERS)}")
            if emit == "tflite" and graph.source_format != "tflite":
                raise PlannerError("--emit tflite needs a .tflite model; ONNX gets plan.json and C")
            written += _writer(emit)(graph, plan, model_path, out, budget=budget, profile=profile)
    if svg is not None:
        from .svg import render_layout_svg

        try:
            Path(svg).write_text(render_layout_svg(graph, plan, budget=budget))
        except OSError as exc:
            raise PlannerError(f"cannot write {svg}: {exc.strerror}") from None
        written.append(Path(svg))
    return written


def _writer(emit: str):
    module, fn = WRITERS[emit]
    try:
        return getattr(importlib.import_module(module), fn)
    except (ModuleNotFoundError, AttributeError):
        raise PlannerError(f"--emit {emit} is not available in this build") from None
