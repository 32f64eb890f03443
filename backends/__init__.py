"""Writers of what a device or a person uses, all reading one checked plan."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
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
# What each input format can get (the .tflite writers need the TFLite file and its order).
EMITS_FOR = {"tflite": ("tflite", "shim", "c", "svg"), "onnx": ("c", "svg")}


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
    from .tensor_report import tensor_table

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
    """Write everything into a staging folder, then move it in: Ctrl-C leaves nothing half-made."""
    written: list[Path] = []
    if outdir is not None:
        out = Path(outdir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=".tinyplan-", dir=out))
        except OSError as exc:
            raise PlannerError(f"cannot write into {out}: {exc.strerror}") from None
        try:
            (stage / "plan.json").write_text(json.dumps(plan_json(graph, plan), indent=1) + "\n")
            staged = [stage / "plan.json"]
            for report in ("report", "html"):
                staged += _writer(report)(graph, plan, model_path, stage, budget=budget,
                                          profile=profile)
            for emit in check_emits(graph.source_format, emits):
                staged += _writer(emit)(graph, plan, model_path, stage, budget=budget,
                                        profile=profile)
            for p in staged:
                target = out / p.relative_to(stage)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(p, target)
                written.append(target)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    if svg is not None:
        from .svg import render_layout_svg

        target = Path(svg)
        tmp = target.with_name(f".{target.name}.partial")
        try:
            tmp.write_text(render_layout_svg(graph, plan, budget=budget))
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise PlannerError(f"cannot write {svg}: {exc.strerror}") from None
        written.append(target)
    return written


# Written with every -o, whatever --emit says: the reports a person reads.
REPORTS = {
    "report": ("backends.tensor_report", "write_tensor_report"),
    "html": ("backends.html_report", "write_html_report"),
}


def _writer(emit: str):
    module, fn = WRITERS[emit] if emit in WRITERS else REPORTS[emit]
    try:
        return getattr(importlib.import_module(module), fn)
    except (ModuleNotFoundError, AttributeError):
        raise PlannerError(f"--emit {emit} is not available in this build") from None
