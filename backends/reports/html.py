"""`report.html`: one self-contained page per plan, for a person to read.

Summary, bounds, the layout picture (inline SVG), the streamed groups (which source ops
each runs, its rings, its stream_in and spill_rows tensors), what was spilled and why, and
the per-tensor table. No scripts, fonts or links to fetch: it opens anywhere, offline,
and can be attached to a ticket or a CI run.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from backends.reports.stream_labels import groups, rings
from backends.reports.svg import render_layout_svg
from backends.reports.tensors import COLUMNS, rows
from planner.analysis import cold_ranges, load_bound, working_set_bound
from planner.device import DeviceProfile
from planner.ir import Graph
from planner.plan import Plan

STYLE = """
body { font-family: Helvetica, Arial, sans-serif; margin: 2em; color: #222; max-width: 1200px }
table { border-collapse: collapse; margin: 1em 0 }
th, td { border: 1px solid #ccc; padding: 3px 8px; font-size: 13px; text-align: left }
td.num { text-align: right; font-variant-numeric: tabular-nums }
th { background: #f3f3f3 }
.fits { color: #176117 } .over { color: #b00 }
figure { margin: 1em 0; overflow-x: auto }
"""


def _row(cells: list[str], num: set[int] = frozenset()) -> str:
    return "<tr>" + "".join(
        f"<td class='num'>{c}</td>" if k in num else f"<td>{c}</td>"
        for k, c in enumerate(cells)) + "</tr>"


def spill_reasons(graph: Graph, plan: Plan) -> list[dict]:
    """Each spilled tensor (part): bytes, storage, the idle stretch it spends away."""
    gaps = cold_ranges(graph)
    found = []
    # A spill_rows transfer is its tensor's one spill, written row by row by its group.
    spills = ("spill", "spill_rows")
    for t in sorted((t for t in plan.transfers if t.kind in spills), key=lambda t: t.step):
        back = sorted(x.step for x in plan.transfers
                      if x.kind not in spills and (x.tensor, x.part) == (t.tensor, t.part))
        gap = next((g for g in gaps if g.tensor == t.tensor and g.start <= t.step < g.end), None)
        found.append({
            "id": t.tensor, "name": graph.tensors[t.tensor].name, "part": t.part,
            "bytes": t.nbytes, "storage": t.storage, "spill_step": t.step,
            "back_steps": back,
            "written": "row by row, while its group runs" if t.kind == "spill_rows" else "whole",
            "kinds": sorted({x.kind for x in plan.transfers
                             if x.kind not in spills and x.tensor == t.tensor}),
            "idle": (gap.start, gap.end) if gap else None,
        })
    return found


def _options(graph: Graph, plan: Plan, pairs, kind: str, step: int) -> str:
    """The group's row-wise options, each marked with what this plan does with it."""
    used = {t.tensor for t in plan.transfers if t.kind == kind and t.step == step}
    how = "streamed" if kind == "stream" else "spilled row by row"
    return ", ".join(f"#{int(t)} {escape(graph.tensors[int(t)].name)} ({int(b):,} B line): "
                     + (how if int(t) in used else "whole in the arena")
                     for t, b in pairs) or "-"


def group_section(graph: Graph, plan: Plan) -> list[str]:
    """One row per streamed group: its step, source ops, rings and row-wise transfers."""
    ring_of = rings(graph, plan)
    out = ["<h2 id='groups'>Streamed groups</h2><p>Each group runs its source ops as one op, "
           "row by row: a tensor between two members lives only in a ring of the rows still "
           "to be read (row r in slot r % R); stream_in inputs are read and spill_rows outputs "
           "written row by row through a line buffer of the given bytes.</p>",
           "<table class='groups'><tr><th>group</th><th>step</th><th>source ops</th>"
           "<th>rings</th><th>stream_in</th><th>spill_rows</th></tr>"]
    for g in groups(graph, plan):
        op = graph.ops[g.op]
        ops = ", ".join(f"{escape(t)} #{m}" for m, t in zip(g.members, g.member_types,
                                                           strict=True))
        ring_cells = "; ".join(
            f"#{r.source_tensor} {escape(graph.tensors[r.source_tensor].name)}: "
            f"{r.rows}/{r.height if r.height is not None else '?'} rows, "
            f"{graph.tensors[t].nbytes:,} B" if r.source_tensor is not None else f"#{t}"
            for t, r in ring_of.items() if r.group == g.group) or "-"
        out.append(_row([str(g.group), str(g.step), ops, ring_cells,
                         _options(graph, plan, op.attrs.get("stream_in", ()), "stream", g.step),
                         _options(graph, plan, op.attrs.get("spill_rows", ()), "spill_rows",
                                  g.step)], {0, 1}))
    out.append("</table>")
    return out


def render_html_report(graph: Graph, plan: Plan, budget: int | None = None,
                       profile: DeviceProfile | None = None) -> str:
    load = load_bound(graph)
    ws = working_set_bound(graph, profile.can_stream if profile else True,
                           profile.fusion if profile else True)
    title = f"tinyplan: {plan.model} ({plan.planner})"
    fits = budget is None or plan.peak_bytes <= budget
    summary = [
        ("model", escape(plan.model)),
        ("planner / status", f"{escape(plan.planner)} / {escape(plan.status)}"),
        ("profile", escape(profile.name) if profile else "-"),
        ("peak (arena head)", f"{plan.peak_bytes:,} B"),
        ("budget", "none" if budget is None else
         f"{budget:,} B <span class='{'fits' if fits else 'over'}'>"
         f"{'fits' if fits else 'DOES NOT FIT'}</span>"),
    ]
    if profile is not None:
        ok = plan.peak_bytes <= profile.sram_bytes
        verdict = "holds the arena head" if ok else "smaller than the arena head"
        summary.append(("device SRAM", f"{profile.sram_bytes:,} B <span class="
                        f"'{'fits' if ok else 'over'}'>{verdict}</span> (the tail and stack "
                        "need room too)"))
    summary += [
        ("spilled / fetched", f"{plan.spilled_bytes:,} B / {plan.fetched_bytes:,} B, est. "
         f"{plan.est_transfer_seconds:.4g} s of transfers"),
        ("fusions", str(len(plan.fusions))),
    ]
    bounds = [
        ("load bound", f"{load.bytes:,} B", "live bytes at the busiest step "
         f"({escape(load.detail)}): no plan without spilling or fusion goes below it"),
    ]
    if plan.stream_groups and graph.source is not None:
        # The plan's graph has its groups as ops: its working-set bound is the streamed one.
        flat = working_set_bound(graph.source, profile.can_stream if profile else True,
                                 profile.fusion if profile else True)
        bounds += [
            ("working-set bound (no streaming)", f"{flat.bytes:,} B", "what one op of the "
             f"source graph must hold with spilling and fused fetching ({escape(flat.detail)})"),
            ("streamed working-set bound", f"{ws.bytes:,} B", "the same over this plan's "
             "graph, each streamed group one op holding its rings and its inputs and outputs "
             f"whole or row by row ({escape(ws.detail)}): no plan with these groups goes "
             "below it"),
        ]
    else:
        bounds.append(("working-set bound", f"{ws.bytes:,} B", "what one op must hold even "
                       f"with spilling and fused fetching ({escape(ws.detail)}): nothing goes "
                       "below it"))
    if plan.bound_bytes is not None:
        bounds.append(("solver's bound", f"{plan.bound_bytes:,} B",
                       "proven lower bound on the peak for this model and profile"))
    out = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
           f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
           f"<h1>{escape(title)}</h1>", "<h2 id='summary'>Summary</h2><table>"]
    out += [f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in summary]
    out.append("</table><h2 id='bounds'>Bounds</h2><table>"
               "<tr><th>bound</th><th>bytes</th><th>meaning</th></tr>")
    out += [_row([k, b, m], {1}) for k, b, m in bounds]
    out.append("</table>")
    if plan.notes:
        out.append("<ul>" + "".join(f"<li>{escape(n)}</li>" for n in plan.notes) + "</ul>")
    out.append("<h2 id='layout'>Layout</h2><figure>"
               + render_layout_svg(graph, plan, budget=budget) + "</figure>")
    if plan.stream_groups:
        out += group_section(graph, plan)
    out.append("<h2 id='spills'>What was spilled and why</h2>")
    reasons = spill_reasons(graph, plan)
    if not reasons:
        out.append("<p>Nothing: the plan keeps every tensor in the arena.</p>")
    else:
        why = (f"to bring the arena under the budget of {budget:,} B" if budget is not None
               else "to lower the peak")
        out.append(f"<p>Each tensor below leaves the arena while no op uses it, {why} "
                   f"(without spilling or fusion no plan goes below the load bound, "
                   f"{load.bytes:,} B).</p><table><tr><th>id</th><th>tensor</th><th>bytes</th>"
                   "<th>storage</th><th>spilled after step</th><th>written</th>"
                   "<th>back at step</th>"
                   "<th>how</th><th>idle between uses</th></tr>")
        for r in reasons:
            name = r["name"] + ("" if r["part"] is None else f" (part {r['part']})")
            idle = f"steps {r['idle'][0]}..{r['idle'][1]}" if r["idle"] else "-"
            out.append(_row([str(r["id"]), escape(name), f"{r['bytes']:,}", escape(r["storage"]),
                             str(r["spill_step"]), r["written"],
                             ", ".join(map(str, r["back_steps"])) or "-",
                             "/".join(r["kinds"]) or "-", idle], {0, 2, 4}))
        out.append("</table>")
    out.append("<h2 id='tensors'>Tensors</h2><table class='tensors'><tr>"
               + "".join(f"<th>{c}</th>" for c in COLUMNS) + "</tr>")
    nums = {k for k, c in enumerate(COLUMNS) if c in ("id", "bytes", "first", "last")}
    for r in rows(graph, plan):
        out.append(_row([f"{r[c]:,}" if c == "bytes" else escape(str(r[c])) for c in COLUMNS],
                        nums))
    out.append("</table></body></html>")
    return "\n".join(out) + "\n"


def write_html_report(graph: Graph, plan: Plan, model_path: Path, outdir: Path,
                      **ctx) -> list[Path]:
    path = Path(outdir) / "report.html"
    path.write_text(render_html_report(graph, plan, ctx.get("budget"), ctx.get("profile")))
    return [path]
