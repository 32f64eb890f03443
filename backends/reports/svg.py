"""Pictures of plans as plain SVG strings: the arena layout and a peak/latency Pareto plot.

Layout: x is the step (op k runs at step k + 1), y the arena offset (address 0 at
the bottom). Every plan segment is one <rect class="seg">; line buffers of
streamed inputs are hatched; while a spilled tensor sits in storage it is drawn
as a dashed bar in a band above the arena (it holds no arena bytes then), with a
down marker where it is spilled and an up marker where it comes back; fused ops
get a shaded column. A streamed group (one op of a planned graph, planner/streaming.py)
gets a blue column whose tooltip lists the source ops it runs; its rings are striped
(one stripe per row held) and say what they hold; a group's line buffers say whether
they carry stream_in rows (hatched) or spill_rows rows (cross-hatched), and a spill_rows
output is in storage from the group's step on. Budget, peak and the load bound are
horizontal lines.
Everything is read from the plan; nothing is re-planned here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from backends.reports.labels import key_part, short_labels
from backends.reports.stream_labels import RingInfo, groups, line_kind, rings
from planner.analysis import load_bound
from planner.ir import Graph
from planner.plan import Plan, Segment

WIDTH = 1100
PLOT_W = 800
PLOT_H = 420
LEFT = 80
TOP = 56
LANE_H = 14
LEGEND_X = LEFT + PLOT_W + 24
MIN_LINE_BUFFER_PX = 4.0
FONT = "font-family='Helvetica, Arial, sans-serif'"


def colour(key: int) -> str:
    """Distinct, stable colours: hues a golden angle apart, two lightness levels."""
    hue = (key * 137.508) % 360
    light = 62 if key % 2 else 72
    return f"hsl({hue:.0f},62%,{light}%)"


def human_bytes(n: float) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.3g} MiB"
    if n >= 1024:
        return f"{n / 1024:.4g} KiB"
    return f"{n:.0f} B"


def nice_step(span: float, target: int = 8) -> float:
    """A 1/2/5 x 10^k tick step that puts about `target` ticks across `span`."""
    if span <= 0:
        return 1.0
    raw = span / target
    base = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * base >= raw:
            return m * base
    return 10 * base


MIB = 1024 * 1024


def _byte_step(span: float) -> float:
    """Tick steps of 1/2/5 x 10^k in the unit the axis is labelled in (B, KiB or MiB)."""
    unit = MIB if span >= 2 * MIB else 1024 if span >= 4096 else 1
    return max(nice_step(span / unit) * unit, 1)


def tick_label(value: float, span: float) -> str:
    """Axis labels in one unit per axis, the one _byte_step counts in for this span."""
    if span >= 2 * MIB:
        return f"{value / MIB:g} MiB"
    if span >= 4096:
        return f"{value / 1024:g} KiB"
    return f"{value:g} B"


def _text(x: float, y: float, s: str, size: int = 11, anchor: str = "start",
          extra: str = "") -> str:
    return (f"<text x='{x:.1f}' y='{y:.1f}' font-size='{size}' text-anchor='{anchor}' {FONT}"
            f"{' ' + extra if extra else ''}>{escape(s)}</text>")


@dataclass(frozen=True)
class _Away:
    """A stretch of steps a tensor (part) spends only in storage."""

    tensor: int
    part: int | None
    start: int  # first step not resident (spill step + 1)
    stop: int  # step at which it is read back (fetch or stream), exclusive
    storage: str
    streamed: bool


def _away_stretches(plan: Plan) -> list[_Away]:
    out = []
    # A spill_rows output is written to storage while its group runs: away from then on.
    spills = {(t.tensor, t.part): t for t in plan.transfers if t.kind in ("spill", "spill_rows")}
    for (tensor, part), spill in spills.items():
        backs = sorted((t for t in plan.transfers
                        if t.kind in ("fetch", "stream") and (t.tensor, t.part) == (tensor, part)),
                       key=lambda t: t.step)
        prev = spill.step + 1
        segs = plan.segments_of(tensor, part)
        for back in backs:
            resident = [s for s in segs if s.first <= prev <= s.last]
            if resident:  # resident again in between (fetched earlier): skip that stretch
                prev = resident[0].last + 1
            if back.step > prev or back.kind == "stream":
                out.append(_Away(tensor, part, prev, max(back.step, prev), spill.storage,
                                 back.kind == "stream"))
            nxt = [s for s in segs if s.first == back.step]
            prev = nxt[0].last + 1 if nxt else back.step + 1
    return out


def _lanes(stretches: Sequence[_Away]) -> list[int]:
    """Interval colouring: each stretch gets the lowest lane free over its steps."""
    ends: list[int] = []
    lanes = [0] * len(stretches)
    for i in sorted(range(len(stretches)), key=lambda i: stretches[i].start):
        s = stretches[i]
        for lane, end in enumerate(ends):
            if end < s.start:
                ends[lane] = s.stop
                lanes[i] = lane
                break
        else:
            lanes[i] = len(ends)
            ends.append(s.stop)
    return lanes


def render_layout_svg(graph: Graph, plan: Plan, budget: int | None = None) -> str:
    steps = max(plan.num_steps, 1)
    bound = load_bound(graph).bytes
    top_bytes = max(plan.peak_bytes, budget or 0, bound, 16)
    y_max = top_bytes * 1.06
    away = _away_stretches(plan)
    lanes = _lanes(away)
    n_lanes = max(lanes, default=-1) + 1
    band_h = (n_lanes * LANE_H + 26) if away else 0
    plot_top = TOP + band_h
    height = plot_top + PLOT_H + 70
    legend_h = 24 + 18 * 14  # legend rows at most
    height = max(height, TOP + legend_h + 20)
    col = PLOT_W / steps

    def x(step: float) -> float:
        return LEFT + step * col

    def y(offset: float) -> float:
        return plot_top + PLOT_H - offset / y_max * PLOT_H

    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{height}' "
        f"viewBox='0 0 {WIDTH} {height}'>",
        "<defs><pattern id='hatch' width='6' height='6' patternUnits='userSpaceOnUse' "
        "patternTransform='rotate(45)'><rect width='6' height='6' fill='white'/>"
        "<line x1='0' y1='0' x2='0' y2='6' stroke='#333' stroke-width='2'/></pattern>"
        "<pattern id='hatch-out' width='6' height='6' patternUnits='userSpaceOnUse'>"
        "<rect width='6' height='6' fill='white'/><path d='M0,0 L6,6 M6,0 L0,6' "
        "stroke='#333' stroke-width='1.2'/></pattern></defs>",
        f"<rect width='{WIDTH}' height='{height}' fill='white'/>",
    ]
    title = (f"{plan.model} - {plan.planner}: peak {human_bytes(plan.peak_bytes)} "
             f"({plan.peak_bytes:,} B)")
    if budget is not None:
        verdict = "fits" if plan.peak_bytes <= budget else "over"
        title += f", budget {budget:,} B ({verdict})"
    if plan.transfers:
        title += (f", spilled {human_bytes(plan.spilled_bytes)}, fetched "
                  f"{human_bytes(plan.fetched_bytes)}")
    out.append(_text(LEFT, 24, title, 15, extra="font-weight='bold'"))
    ops = f"{len(graph.ops)} ops"
    if graph.source is not None and plan.stream_groups:
        ops += (f" ({len(graph.source.ops)} source ops, {len(plan.stream_groups)} streamed "
                "group" + ("s" if len(plan.stream_groups) > 1 else "") + ")")
    out.append(_text(LEFT, 42, f"{ops}, {len(plan.segments)} segments, status "
                     f"{plan.status}; x = step (op k runs at step k+1), y = arena offset", 11,
                     extra="fill='#555'"))

    # Fused ops: a shaded column under everything else.
    for f in plan.fusions:
        for op in (f.concat, f.conv):
            if op is None:
                continue
            out.append(f"<rect class='fusion' x='{x(op + 1):.1f}' y='{plot_top}' "
                       f"width='{max(col, 1):.1f}' height='{PLOT_H}' fill='#fff3c4'>"
                       f"<title>fused op {op} ({escape(graph.ops[op].op_type)})</title></rect>")
        out.append(_text(x((f.conv if f.conv is not None else f.concat) + 1.5), plot_top - 4,
                         "F", 10, "middle", "fill='#a67c00'"))

    # Streamed groups: a blue column naming the source ops each one runs.
    for g in groups(graph, plan):
        tip = f"step {g.step}: op {g.op} runs streamed {g.describe()}"
        out.append(f"<rect class='group' data-group='{g.group}' x='{x(g.step):.1f}' "
                   f"y='{plot_top}' width='{max(col, 1):.1f}' height='{PLOT_H}' "
                   f"fill='#e6f0fb'><title>{escape(tip)}</title></rect>")
        out.append(_text(x(g.step + 0.5), plot_top - 4, f"G{g.group}", 10, "middle",
                         "fill='#1f5fa8'"))

    # Axes and grid.
    out.append(f"<rect x='{LEFT}' y='{plot_top}' width='{PLOT_W}' height='{PLOT_H}' "
               "fill='none' stroke='#999'/>")
    ystep = _byte_step(y_max)
    tick = 0
    while tick <= y_max:
        yy = y(tick)
        out.append(f"<line class='ytick' x1='{LEFT - 5}' y1='{yy:.1f}' x2='{LEFT + PLOT_W}' "
                   f"y2='{yy:.1f}' stroke='#eee'/>")
        out.append(_text(LEFT - 8, yy + 4, tick_label(tick, y_max), 10, "end"))
        tick += ystep
    xstep = max(1, int(nice_step(steps, 12)))
    for s in range(0, steps + 1, xstep):
        out.append(f"<line class='xtick' x1='{x(s):.1f}' y1='{plot_top + PLOT_H}' "
                   f"x2='{x(s):.1f}' y2='{plot_top + PLOT_H + 5}' stroke='#666'/>")
        out.append(_text(x(s), plot_top + PLOT_H + 18, str(s), 10, "middle"))
    out.append(_text(LEFT + PLOT_W / 2, plot_top + PLOT_H + 38, "step", 12, "middle"))
    out.append(_text(18, plot_top + PLOT_H / 2, "arena offset", 12, "middle",
                     f"transform='rotate(-90 18 {plot_top + PLOT_H / 2:.1f})'"))

    # Segments: one rect each. Line buffers (a few rows of a streamed input) are drawn at
    # least MIN_LINE_BUFFER_PX tall so that they show at any arena scale.
    labels = short_labels({s.tensor: graph.tensors[s.tensor].name for s in plan.segments})
    key_uses = Counter(key_part(label) for label in labels.values())
    ring_of = rings(graph, plan)
    lines_of = {seg: line_kind(graph, plan, seg) for seg in plan.segments
                if seg.role == "line_buffer"}
    for seg in plan.segments:
        y0, y1 = y(seg.end), y(seg.offset)
        if seg.role == "line_buffer" and y1 - y0 < MIN_LINE_BUFFER_PX:
            y0 = y1 - MIN_LINE_BUFFER_PX
        key = key_part(labels[seg.tensor])
        out.append(_segment(graph, seg, x(seg.first), x(seg.last + 1), y0, y1,
                            labels[seg.tensor], key if key_uses[key] == 1 else None,
                            ring_of.get(seg.tensor), lines_of.get(seg)))

    # Spill / fetch markers on the arena, storage stretches in the band above it.
    if away:
        band_top = TOP + 6
        out.append(_text(LEFT - 8, band_top + 10, "in storage", 10, "end", "fill='#555'"))
        out.append(f"<line x1='{LEFT}' y1='{plot_top - 10}' x2='{LEFT + PLOT_W}' "
                   f"y2='{plot_top - 10}' stroke='#ccc'/>")
        for s, lane in zip(away, lanes, strict=True):
            x0, x1 = x(s.start), x(max(s.stop, s.start + 1) if not s.streamed else s.stop + 1)
            yy = band_top + lane * LANE_H
            name = graph.tensors[s.tensor].name + ("" if s.part is None else f" part {s.part}")
            how = "streamed back" if s.streamed else "fetched"
            out.append(f"<rect class='away' x='{x0:.1f}' y='{yy:.1f}' width='{x1 - x0:.1f}' "
                       f"height='{LANE_H - 3}' fill='{colour(s.tensor)}' fill-opacity='0.35' "
                       f"stroke='{colour(s.tensor)}' stroke-width='1.5' stroke-dasharray='4 2'>"
                       f"<title>{escape(name)} in {escape(s.storage)} over steps "
                       f"{s.start}..{s.stop - 1}, {how} at {s.stop}</title></rect>")
            if x1 - x0 > 7 * len(name) * 0.6 + 10:
                out.append(_text(x0 + 3, yy + LANE_H - 5, f"{name} -> {s.storage}", 9))
    for t in plan.transfers:
        seg_list = plan.segments_of(t.tensor, t.part)
        if t.kind == "spill":
            at = [s for s in seg_list if s.first <= t.step <= s.last]
            if at:
                out.append(_marker(x(t.step + 1), y(at[0].end), "down", t.tensor))
        elif t.kind == "spill_rows":  # written row by row from its line buffer
            lb = [s for s in plan.segments if s.role == "line_buffer" and s.tensor == t.tensor
                  and s.first <= t.step <= s.last]
            top = min(y(lb[0].end), y(lb[0].offset) - MIN_LINE_BUFFER_PX) if lb \
                else plot_top + 10
            out.append(_marker(x(t.step + 0.5), top, "rows", t.tensor, graph, t))
        elif t.kind == "fetch":
            at = [s for s in seg_list if s.first == t.step]
            if at:
                out.append(_marker(x(t.step), y(at[0].end), "up", t.tensor))
        else:  # stream: the op reads it from storage through its line buffer
            lb = [s for s in plan.segments if s.role == "line_buffer" and s.tensor == t.tensor
                  and s.first <= t.step <= s.last]
            # On top of the line buffer as drawn (at least MIN_LINE_BUFFER_PX tall).
            top = min(y(lb[0].end), y(lb[0].offset) - MIN_LINE_BUFFER_PX) if lb \
                else plot_top + 10
            out.append(_stream_marker(x(t.step + 0.5), top, graph, t))

    # Horizontal lines: load bound, peak, budget.
    out.append(_hline("bound", y(bound), "#666", "2 3", f"load bound {bound:,} B", 0.0))
    out.append(_hline("peak", y(plan.peak_bytes), "#111", "", f"peak {plan.peak_bytes:,} B",
                      1.0))
    if budget is not None:
        out.append(_hline("budget", y(budget), "#d22", "8 4", f"budget {budget:,} B", 0.5))

    kinds = {t.kind for t in plan.transfers}
    drawn = {"line_buffer": any(k in ("stream", "stream_in") for k in lines_of.values()),
             "away": bool(away), "spill": "spill" in kinds, "fetch": "fetch" in kinds,
             "stream": "stream" in kinds, "fusion": bool(plan.fusions),
             "budget": budget is not None, "group": bool(groups(graph, plan)),
             "ring": bool(ring_of), "spill_rows": "spill_rows" in kinds,
             "line_out": "spill_rows" in lines_of.values()}
    out += _legend(LEGEND_X, TOP, drawn)
    out.append("</svg>")
    return "\n".join(out) + "\n"


LINE_WHAT = {"stream": "line buffer", "stream_in": "line buffer, stream_in rows from storage",
             "spill_rows": "line buffer, spill_rows rows to storage"}


def _segment(graph: Graph, seg: Segment, x0: float, x1: float, y0: float, y1: float,
             short: str, key: str | None, ring: RingInfo | None = None,
             line: str | None = None) -> str:
    tensor = graph.tensors[seg.tensor]
    name = tensor.name + ("" if seg.part is None else f" [part {seg.part}]")
    what = LINE_WHAT.get(line or "", seg.role.replace("_", " "))
    if ring is not None:
        what = ring.describe(graph)
    tip = (f"#{tensor.id} {name} ({what}) steps {seg.first}..{seg.last}, "
           f"offset {seg.offset:,}..{seg.end:,}, {seg.size:,} B")
    w, h = max(x1 - x0, 0.5), max(y1 - y0, 0.5)
    role = "ring" if ring is not None else line or seg.role
    if seg.role == "line_buffer":
        fill = "url(#hatch-out)" if line == "spill_rows" else "url(#hatch)"
        stroke = f"stroke='{colour(seg.tensor)}' stroke-width='2'"
    else:
        fill = colour(ring.source_tensor if ring is not None and ring.source_tensor is not None
                      else seg.tensor)
        stroke = "stroke='#333' stroke-width='0.5'"
    rect = (f"<rect class='seg' data-tensor='{seg.tensor}' data-role='{role}' x='{x0:.2f}' "
            f"y='{y0:.2f}' width='{w:.2f}' height='{h:.2f}' fill='{fill}' {stroke}>"
            f"<title>{escape(tip)}</title></rect>")
    if ring is not None:
        # One stripe per row held: a ring is R rows of its tensor, not the whole tensor.
        for k in range(1, min(ring.rows, int(h // 2)) if ring.rows > 1 else 0):
            yy = y0 + h * k / ring.rows
            rect += (f"\n<line class='ring-row' x1='{x0:.2f}' y1='{yy:.2f}' x2='{x0 + w:.2f}' "
                     f"y2='{yy:.2f}' stroke='#1f5fa8' stroke-width='0.6' "
                     "pointer-events='none'/>")
    if seg.role != "tensor":
        return rect
    suffix = "" if seg.part is None else f"/{seg.part}"
    across, up = int((w - 6) / 6), int((h - 6) / 6)  # characters that fit each way
    cx, cy = x0 + w / 2, y0 + h / 2
    style = "fill='#111' pointer-events='none'"
    if h >= 13 and across >= 2 and (across >= up or w < 13):
        label = _fit(short, key, suffix, tensor.id, across)
        if label:
            rect += "\n" + _text(cx, cy + 4, label, 10, "middle", style)
    elif w >= 13 and up >= 2:  # tall and narrow: write it upwards
        label = _fit(short, key, suffix, tensor.id, up)
        if label:
            rect += "\n" + _text(cx + 4, cy, label, 10, "middle",
                                 f"{style} transform='rotate(-90 {cx + 4:.1f} {cy:.1f})'")
    return rect


def _fit(short: str, key: str | None, suffix: str, tensor: int, chars: int) -> str:
    """The first that fits of: the short label, its key component (when no other label
    shares it), the key "#id" that the tooltip resolves."""
    for label in (short, key, f"#{tensor}"):
        if label is not None and len(label + suffix) <= chars:
            return label + suffix
    return ""


def _marker(cx: float, cy: float, direction: str, tensor: int, graph: Graph | None = None,
            transfer=None) -> str:
    if direction == "rows":  # spill_rows: rows leave the line buffer as they are produced
        pts = f"{cx - 5:.1f},{cy - 9:.1f} {cx + 5:.1f},{cy - 9:.1f} {cx:.1f},{cy - 1:.1f}"
        name = graph.tensors[tensor].name if graph is not None else ""
        tip = (f"spill_rows of #{tensor} {name} to {transfer.storage} at step {transfer.step}: "
               f"{transfer.nbytes:,} B written row by row") if transfer is not None else \
            f"spill_rows of tensor {tensor}"
        return (f"<polygon class='spill-rows-marker' points='{pts}' fill='#1f6fd1' "
                f"stroke='white' stroke-width='0.8'><title>{escape(tip)}</title></polygon>")
    if direction == "down":
        pts = f"{cx - 5:.1f},{cy - 9:.1f} {cx + 5:.1f},{cy - 9:.1f} {cx:.1f},{cy - 1:.1f}"
        cls, tip = "spill-marker", "spill"
    else:
        pts = f"{cx - 5:.1f},{cy - 1:.1f} {cx + 5:.1f},{cy - 1:.1f} {cx:.1f},{cy - 9:.1f}"
        cls, tip = "fetch-marker", "fetch"
    return (f"<polygon class='{cls}' points='{pts}' fill='#222' stroke='white' "
            f"stroke-width='0.8'><title>{tip} of tensor {tensor}</title></polygon>")


def _stream_marker(cx: float, cy: float, graph: Graph, t) -> str:
    name = graph.tensors[t.tensor].name
    pts = (f"{cx:.1f},{cy - 10:.1f} {cx + 5:.1f},{cy - 5:.1f} {cx:.1f},{cy:.1f} "
           f"{cx - 5:.1f},{cy - 5:.1f}")
    return (f"<polygon class='stream-marker' points='{pts}' fill='#1f6fd1' stroke='white' "
            f"stroke-width='0.8'><title>stream of #{t.tensor} {escape(name)} from "
            f"{escape(t.storage)} at step {t.step}: {t.nbytes:,} B</title></polygon>")


def _hline(cls: str, yy: float, stroke: str, dash: str, label: str, where: float) -> str:
    """A full-width line labelled above it at fraction `where` of the plot width.

    Each line gets its own label position, so equal or close values stay readable;
    a white halo keeps labels legible over segments.
    """
    dash_attr = f" stroke-dasharray='{dash}'" if dash else ""
    halo = "paint-order='stroke' stroke='white' stroke-width='3' font-weight='bold'"
    return (f"<g class='{cls}'><line x1='{LEFT}' y1='{yy:.1f}' x2='{LEFT + PLOT_W}' "
            f"y2='{yy:.1f}' stroke='{stroke}' stroke-width='1.6'{dash_attr}/>"
            + _text(LEFT + 4 + where * (PLOT_W - 130), yy - 4, label, 10, "start",
                    f"fill='{stroke}' {halo}")
            + "</g>")


def _legend(x0: float, y0: float, drawn: Mapping[str, bool]) -> list[str]:
    """Legend rows for what this picture draws, in one fixed order."""
    out = ["<g class='legend'>", _text(x0, y0 + 10, "legend", 12, extra="font-weight='bold'")]
    keys = ["tensor", "line_buffer", "line_out", "ring", "away", "spill", "spill_rows", "fetch",
            "stream", "fusion", "group", "peak", "budget", "bound"]
    rows: list[tuple[str, str]] = [
        (f"<rect width='22' height='10' fill='{colour(3)}' stroke='#333' stroke-width='0.5'/>",
         "tensor (colour per tensor)"),
        ("<rect width='22' height='10' fill='url(#hatch)' stroke='#333'/>",
         "line buffer (streamed)"),
        ("<rect width='22' height='10' fill='url(#hatch-out)' stroke='#333'/>",
         "line buffer (spill_rows)"),
        (f"<rect width='22' height='10' fill='{colour(3)}' stroke='#333' stroke-width='0.5'/>"
         "<line x1='0' y1='3.3' x2='22' y2='3.3' stroke='#1f5fa8' stroke-width='0.6'/>"
         "<line x1='0' y1='6.6' x2='22' y2='6.6' stroke='#1f5fa8' stroke-width='0.6'/>",
         "ring (rows held)"),
        (f"<rect width='22' height='10' fill='{colour(3)}' fill-opacity='0.35' "
         f"stroke='{colour(3)}' stroke-dasharray='4 2'/>", "in storage (spilled)"),
        ("<polygon points='6,0 16,0 11,9' fill='#222'/>", "spill"),
        ("<polygon points='6,0 16,0 11,9' fill='#1f6fd1'/>", "spill_rows (row by row)"),
        ("<polygon points='6,9 16,9 11,0' fill='#222'/>", "fetch"),
        ("<polygon points='11,0 16,5 11,10 6,5' fill='#1f6fd1'/>", "stream (read in place)"),
        ("<rect width='22' height='10' fill='#fff3c4'/>", "fused op"),
        ("<rect width='22' height='10' fill='#e6f0fb' stroke='#9bbbe0'/>",
         "streamed group (one op)"),
        ("<line x1='0' y1='5' x2='22' y2='5' stroke='#111' stroke-width='1.6'/>", "peak"),
        ("<line x1='0' y1='5' x2='22' y2='5' stroke='#d22' stroke-width='1.6' "
         "stroke-dasharray='8 4'/>", "budget"),
        ("<line x1='0' y1='5' x2='22' y2='5' stroke='#888' stroke-width='1.6' "
         "stroke-dasharray='2 3'/>", "load bound"),
    ]
    shown = [row for key, row in zip(keys, rows, strict=True) if drawn.get(key, True)]
    for k, (icon, label) in enumerate(shown):
        yy = y0 + 22 + 18 * k
        out.append(f"<g transform='translate({x0:.0f},{yy:.0f})'>{icon}</g>")
        out.append(_text(x0 + 30, yy + 9, label, 11))
    out.append("</g>")
    return out


def write_layout_svg(graph: Graph, plan: Plan, model_path: str | Path, outdir: str | Path,
                     **ctx) -> list[Path]:
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{Path(model_path).stem}.{plan.planner}.layout.svg"
    path.write_text(render_layout_svg(graph, plan, budget=ctx.get("budget")))
    return [path]


# ---------------------------------------------------------------- Pareto plot


@dataclass(frozen=True)
class ParetoPoint:
    series: str  # one line per series (a model, or a planner within one model)
    peak_bytes: int
    seconds: float  # estimated transfer time
    label: str = ""


PointLike = ParetoPoint | tuple | Mapping


def _point(p: PointLike) -> ParetoPoint:
    if isinstance(p, ParetoPoint):
        return p
    if isinstance(p, Mapping):
        seconds = p.get("seconds", p.get("est_transfer_seconds", p.get("latency", 0.0)))
        return ParetoPoint(str(p.get("series", p.get("model", ""))), int(p["peak_bytes"]),
                           float(seconds or 0.0), str(p.get("label", "")))
    series, peak, seconds, *rest = p
    return ParetoPoint(str(series), int(peak), float(seconds), str(rest[0]) if rest else "")


def pareto_front(points: Iterable[ParetoPoint]) -> list[ParetoPoint]:
    """Points no other point beats on both peak and time, by increasing peak."""
    front: list[ParetoPoint] = []
    for p in sorted(points, key=lambda p: (p.peak_bytes, p.seconds)):
        if not front or p.seconds < front[-1].seconds:
            front.append(p)
    return front


# Colour-blind-safe Okabe-Ito colours and one marker shape per series, so planners that
# coincide stay apart (hollow shapes of different kinds overlap visibly, unlike rings).
SERIES_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9",
                  "#000000", "#8C564B")
SERIES_SHAPES = ("circle", "square", "triangle", "diamond", "triangle-down", "plus", "cross",
                 "star")
# Planners keep their style from plot to plot.
KNOWN_SERIES = ("ilp", "tinyseg", "tflm-greedy", "greedy-by-size", "greedy-by-breadth",
                "hill-climb", "linear", "ilp-streamed")
# Points past a gap of this factor between consecutive peaks are drawn at the right edge,
# so one far outlier (the linear planner) does not squeeze everything else into a corner.
OUTLIER_FACTOR = 2.5


def series_style(names: Sequence[str]) -> dict[str, tuple[str, str]]:
    unknown = [n for n in names if n not in KNOWN_SERIES]
    # Unknown series take the slots after the known ones, in order of appearance.
    slot = {n: KNOWN_SERIES.index(n) if n in KNOWN_SERIES else len(KNOWN_SERIES) +
            unknown.index(n) for n in names}
    return {n: (SERIES_COLOURS[slot[n] % len(SERIES_COLOURS)],
                SERIES_SHAPES[slot[n] % len(SERIES_SHAPES)]) for n in names}


def marker_path(shape: str, cx: float, cy: float, r: float = 5.0) -> str:
    """SVG path data of a marker of `shape` centred on (cx, cy)."""
    if shape == "circle":
        return (f"M{cx - r:.1f},{cy:.1f} a{r:.1f},{r:.1f} 0 1,0 {2 * r:.1f},0 "
                f"a{r:.1f},{r:.1f} 0 1,0 {-2 * r:.1f},0 Z")
    if shape == "square":
        q = r * 0.85
        return f"M{cx - q:.1f},{cy - q:.1f} h{2 * q:.1f} v{2 * q:.1f} h{-2 * q:.1f} Z"
    if shape in ("triangle", "triangle-down"):
        d = 1 if shape == "triangle" else -1
        return (f"M{cx:.1f},{cy - d * r:.1f} L{cx + r:.1f},{cy + d * r * 0.8:.1f} "
                f"L{cx - r:.1f},{cy + d * r * 0.8:.1f} Z")
    if shape == "diamond":
        return (f"M{cx:.1f},{cy - r:.1f} L{cx + r:.1f},{cy:.1f} L{cx:.1f},{cy + r:.1f} "
                f"L{cx - r:.1f},{cy:.1f} Z")
    if shape == "plus":
        return f"M{cx - r:.1f},{cy:.1f} H{cx + r:.1f} M{cx:.1f},{cy - r:.1f} V{cy + r:.1f}"
    if shape == "cross":
        q = r * 0.8
        return (f"M{cx - q:.1f},{cy - q:.1f} L{cx + q:.1f},{cy + q:.1f} "
                f"M{cx - q:.1f},{cy + q:.1f} L{cx + q:.1f},{cy - q:.1f}")
    pts = []  # star
    for k in range(10):
        a = math.pi / 2 + k * math.pi / 5
        rr = r if k % 2 == 0 else r * 0.45
        pts.append(f"{cx + rr * math.cos(a):.1f},{cy - rr * math.sin(a):.1f}")
    return "M" + " L".join(pts) + " Z"


def render_pareto_svg(points: Iterable[PointLike], title: str,
                      budgets: Mapping[str, int] | None = None,
                      y_label: str = "estimated transfer time") -> str:
    """Peak against transfer time (or `y_label`'s seconds), one marker shape and colour per series.

    The x axis stops at the first gap of OUTLIER_FACTOR between consecutive peaks; points
    beyond it sit at the right edge with an arrow and their exact peak. `budgets`
    (label -> bytes) are drawn as labelled vertical lines where they fall in range.
    """
    pts = [_point(p) for p in points]
    series = list(dict.fromkeys(p.series for p in pts))
    style = series_style(series)
    width, height, left, top, pw, ph = 920, 480, 90, 60, 540, 350
    peaks = sorted({p.peak_bytes for p in pts})
    cut = next((b for a, b in zip(peaks, peaks[1:], strict=False)
                if b > max(a * OUTLIER_FACTOR, a + 16)), None)
    near = [p for p in pts if cut is None or p.peak_bytes < cut]
    outliers = [p for p in pts if p not in near]
    x_lo = min((p.peak_bytes for p in near), default=0)
    x_hi = max((p.peak_bytes for p in near), default=1)
    in_range = [b for b in (budgets or {}).values() if b is not None and b <= x_hi * 1.1]
    x_lo, x_hi = min([x_lo, *in_range]), max([x_hi, *in_range])
    pad = max((x_hi - x_lo) * 0.08, x_hi * 0.02, 16)
    x_lo, x_hi = max(0, x_lo - pad), x_hi + pad
    y_hi = max((p.seconds for p in pts), default=0.0)
    y_hi = y_hi * 1.1 if y_hi > 0 else 1.0

    def x(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * pw

    def y(v: float) -> float:
        return top + ph - v / y_hi * ph

    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}'>",
        f"<rect width='{width}' height='{height}' fill='white'/>",
        _text(left, 28, title, 15, extra="font-weight='bold'"),
        f"<rect x='{left}' y='{top}' width='{pw}' height='{ph}' fill='none' stroke='#999'/>",
    ]
    if outliers:
        out.append(_text(left, 46, f"x axis zoomed to {x_lo / 1024:,.0f}-{x_hi / 1024:,.0f} "
                         "KiB; points beyond it sit at the right edge (arrow, exact peak)", 10,
                         extra="fill='#555'"))
    xs = _byte_step(x_hi - x_lo)
    tick = math.ceil(x_lo / xs) * xs
    while tick <= x_hi:
        out.append(f"<line class='xtick' x1='{x(tick):.1f}' y1='{top}' x2='{x(tick):.1f}' "
                   f"y2='{top + ph + 5}' stroke='#eee'/>")
        out.append(_text(x(tick), top + ph + 18, tick_label(tick, x_hi - x_lo), 10, "middle"))
        tick += xs
    ys = nice_step(y_hi, 6)
    tick = 0.0
    while tick <= y_hi + 1e-12:
        out.append(f"<line class='ytick' x1='{left - 5}' y1='{y(tick):.1f}' x2='{left + pw}' "
                   f"y2='{y(tick):.1f}' stroke='#eee'/>")
        out.append(_text(left - 8, y(tick) + 4, f"{tick:.3g} s", 10, "end"))
        tick += ys
    # Budgets: where each sits on the peak axis, labelled at the top.
    by_bytes: dict[int, list[str]] = {}
    for label, b in (budgets or {}).items():
        if b is not None and x_lo <= b <= x_hi:
            by_bytes.setdefault(b, []).append(label)
    for k, (b, labels) in enumerate(sorted(by_bytes.items())):
        text = "/".join(labels)
        out.append(f"<g class='budget'><line x1='{x(b):.1f}' y1='{top}' x2='{x(b):.1f}' "
                   f"y2='{top + ph}' stroke='#d22' stroke-width='1' stroke-dasharray='4 3'>"
                   f"<title>budget {escape(text)}: {b:,} B</title></line>"
                   + _text(x(b) + 2, top + 10 + 11 * (k % 3), f"budget {text}", 9, "start",
                           "fill='#d22'") + "</g>")
    out.append(_text(left + pw / 2, top + ph + 40, "peak arena bytes", 12, "middle"))
    out.append(_text(20, top + ph / 2, y_label, 12, "middle",
                     f"transform='rotate(-90 20 {top + ph / 2:.1f})'"))
    edge = left + pw + 10
    for k, name in enumerate(series):
        c, shape = style[name]
        mine = [p for p in pts if p.series == name]
        front = pareto_front([p for p in mine if p in near])
        if len(front) > 1:
            path = " ".join(
                f"{'M' if i == 0 else 'L'}{x(p.peak_bytes):.1f},{y(p.seconds):.1f}"
                for i, p in enumerate(front)
            )
            out.append(f"<path class='front' d='{path}' fill='none' stroke='{c}' "
                       "stroke-width='1.2' stroke-opacity='0.7'/>")
        for p in mine:
            same = [q.series for q in pts if (q.peak_bytes, q.seconds) ==
                    (p.peak_bytes, p.seconds) and q.series != name]
            tip = f"{name} {p.label}: peak {p.peak_bytes:,} B, {p.seconds:.6g} s".strip()
            if same:
                tip += f" (same point: {', '.join(dict.fromkeys(same))})"
            far = p not in near
            cx = edge if far else x(p.peak_bytes)
            out.append(f"<path class='point' data-series='{escape(name)}'"
                       f"{' data-outlier=' + chr(39) + '1' + chr(39) if far else ''} "
                       f"d='{marker_path(shape, cx, y(p.seconds))}' fill='white' "
                       f"fill-opacity='0.6' stroke='{c}' stroke-width='1.8'>"
                       f"<title>{escape(tip)}</title></path>")
            if far:
                out.append(_text(edge - 12, y(p.seconds) + 3, "→", 12, "end", f"fill='{c}'"))
                out.append(_text(edge + 8, y(p.seconds) + 4,
                                 f"{name}: {p.peak_bytes:,} B", 9, "start", f"fill='{c}'"))
        ly = top + 14 + 18 * k
        lx = left + pw + 24 + (110 if outliers else 0)
        out.append(f"<path d='{marker_path(shape, lx, ly - 4)}' fill='white' stroke='{c}' "
                   "stroke-width='1.8'/>")
        out.append(_text(lx + 12, ly, name, 11))
    out.append("</svg>")
    return "\n".join(out) + "\n"
