"""Per-tensor report of a plan (Vela's habit): one row per planned buffer, CSV and Markdown.

Columns: id, name, shape, dtype, bytes (16-byte aligned, as planned), first/last step
of the TFLM lifetime, where it sits in the arena (offset@steps per segment), and what
moves it (spill/fetch/stream/spill_rows with step and storage). For a plan with streamed
groups: a ring's segments say "ring R/H rows", a group's line buffers say whether they carry
stream_in or spill_rows rows, and each tensor internal to a group (it never exists whole)
gets a row of 0 planned bytes naming the ring that holds its rows. Also the tensor list
plan.json carries so that a plan names its tensors, not only their ids.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from backends.reports.stream_labels import groups, line_kind, rings
from planner.analysis import buffers
from planner.ir import Graph
from planner.plan import Plan

COLUMNS = ("id", "name", "shape", "dtype", "bytes", "first", "last", "offsets", "transfers")


def tensor_table(graph: Graph) -> list[dict]:
    """What plan.json says about each tensor besides its id (names, shapes, sizes)."""
    return [{"id": t.id, "name": t.name, "shape": list(t.shape), "dtype": t.dtype,
             "bytes": t.nbytes} for t in graph.tensors]


def _segment_note(graph: Graph, plan: Plan, seg, ring_of) -> str:
    if seg.tensor in ring_of:
        r = ring_of[seg.tensor]
        return f" ring {r.rows}/{r.height if r.height is not None else '?'} rows"
    kind = line_kind(graph, plan, seg)
    if kind is None:
        return ""
    return " line buffer" + ("" if kind == "stream" else f" {kind}")


def rows(graph: Graph, plan: Plan) -> list[dict]:
    out = []
    ring_of = rings(graph, plan)
    for b in buffers(graph):
        t = graph.tensors[b.tensor]
        segs = sorted((s for s in plan.segments if s.tensor == b.tensor),
                      key=lambda s: (s.first, s.part or 0))
        offsets = " ".join(
            f"{s.offset}@{s.first}-{s.last}" + (f"(part {s.part})" if s.part is not None else "")
            + _segment_note(graph, plan, s, ring_of) for s in segs)
        moves = " ".join(
            f"{tr.kind}@{tr.step}:{tr.storage}:{tr.nbytes}B"
            + (f"(part {tr.part})" if tr.part is not None else "")
            for tr in sorted((tr for tr in plan.transfers if tr.tensor == b.tensor),
                             key=lambda tr: tr.step))
        out.append({"id": t.id, "name": t.name, "shape": "x".join(map(str, t.shape)) or "scalar",
                    "dtype": t.dtype, "bytes": b.size, "first": b.first, "last": b.last,
                    "offsets": offsets or "-", "transfers": moves or "-"})
    step_of_group = {g.group: g.step for g in groups(graph, plan)}
    for r in sorted(ring_of.values(), key=lambda r: r.source_tensor or -1):
        if r.source_tensor is None:
            continue
        t = graph.tensors[r.source_tensor]
        step = step_of_group.get(r.group, 0)
        out.append({"id": t.id, "name": t.name,
                    "shape": "x".join(map(str, t.shape)) or "scalar", "dtype": t.dtype,
                    "bytes": 0, "first": step, "last": step,
                    "offsets": f"internal to group {r.group}: rows in ring #{r.tensor} "
                               f"({r.rows}/{r.height if r.height is not None else '?'} rows)",
                    "transfers": "-"})
    return out


def render_csv(graph: Graph, plan: Plan) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows(graph, plan))
    return buf.getvalue()


def render_markdown(graph: Graph, plan: Plan) -> str:
    lines = [f"# Tensors of {plan.model} ({plan.planner}, peak {plan.peak_bytes:,} B)", "",
             "offsets: `offset@first-last` per arena segment; transfers: "
             "`kind@step:storage:bytes`.", "",
             "| " + " | ".join(COLUMNS) + " |",
             "| " + " | ".join("---:" if c in ("id", "bytes", "first", "last") else "---"
                               for c in COLUMNS) + " |"]
    for r in rows(graph, plan):
        cells = [f"{r[c]:,}" if c == "bytes" else str(r[c]).replace("|", "\\|") for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tensor_report(graph: Graph, plan: Plan, model_path: Path, outdir: Path,
                        **ctx) -> list[Path]:
    csv_path, md_path = Path(outdir) / "tensors.csv", Path(outdir) / "tensors.md"
    csv_path.write_text(render_csv(graph, plan))
    md_path.write_text(render_markdown(graph, plan))
    return [csv_path, md_path]
