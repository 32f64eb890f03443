"""`analyze MODEL`: tensors, ops (MACs, bytes, estimated time), TFLM lifetimes, cold ranges
and both lower bounds."""

from __future__ import annotations

import argparse
import json

from ..analysis import buffers, cold_ranges, load_bound, working_set_bound
from ..compute import dtype_of, kind_of, op_bytes, op_macs, op_seconds
from ..device import DeviceProfile, bundled_profiles, load_profile
from ..ir import Graph
from ..kernels import op_kernels_of
from ..schema import stamp
from .common import add_kernel_args, add_model_args, planned_graph


def add_parser(sub) -> None:
    p = sub.add_parser("analyze", help="print tensors, lifetimes and lower bounds")
    add_model_args(p)
    add_kernel_args(p)
    p.add_argument("--profile", default="qspi-flash",
                   help=f"device profile whose kernels apply: {', '.join(bundled_profiles())} "
                   "or a .toml file")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(run=run)


def report(graph: Graph, profile: DeviceProfile | None = None) -> dict:
    load, ws = load_bound(graph), working_set_bound(graph)
    life = {b.tensor: b for b in buffers(graph)}
    profile = profile or load_profile("qspi-flash")
    seconds = op_seconds(graph, profile)
    return {
        "model": graph.name,
        "format": graph.source_format,
        "num_ops": len(graph.ops),
        "num_tensors": len(graph.tensors),
        "load_bound_bytes": load.bytes,
        "load_bound_step": load.step,
        "working_set_bound_bytes": ws.bytes,
        "working_set_bound_op": ws.op,
        "working_set_bound_detail": ws.detail,
        "op_kernels": [list(k) for k in op_kernels_of(graph)],
        # Op timing: estimates from the profile's clock and [compute] table (compute.py).
        "profile": profile.name,
        "clock_mhz": profile.compute.clock_hz / 1e6,
        "est_compute_seconds": sum(seconds),
        "ops": [
            {"index": op.index, "step": op.index + 1, "name": op.name, "type": op.op_type,
             "inputs": list(op.inputs), "outputs": list(op.outputs), "scratch": list(op.scratch),
             "cost_kind": kind_of(op), "cost_dtype": dtype_of(graph, op),
             "macs": op_macs(graph, op), "bytes": op_bytes(graph, op), "est_seconds": sec}
            for op, sec in zip(graph.ops, seconds, strict=True)
        ],
        "tensors": [
            {"id": t.id, "name": t.name, "shape": list(t.shape), "dtype": t.dtype,
             "bytes": t.nbytes, "role": t.role.value,
             "first": life[t.id].first if t.id in life else None,
             "last": life[t.id].last if t.id in life else None}
            for t in graph.tensors
        ],
        "cold_ranges": [
            {"tensor": g.tensor, "from_step": g.start, "to_step": g.end, "length": g.length}
            for g in cold_ranges(graph)
        ],
    }


def run(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    graph = planned_graph(args, profile)
    data = report(graph, profile)
    if args.json:
        print(json.dumps(stamp("analyze", {**data, "model_path": str(args.model)})))
        return 0
    print(f"model {graph.name} ({graph.source_format}): {len(graph.ops)} ops, "
          f"{len(graph.tensors)} tensors")
    print(f"{'id':>4} {'role':<10} {'bytes':>10} {'life':>11}  shape      name")
    for t in data["tensors"]:
        life = f"[{t['first']},{t['last']}]" if t["first"] is not None else "-"
        shape = "x".join(map(str, t["shape"])) or "scalar"
        print(f"{t['id']:>4} {t['role']:<10} {t['bytes']:>10,} {life:>11}  {shape:<10} {t['name']}")
    print(f"ops (estimated time: {profile.name} profile, {data['clock_mhz']:g} MHz; "
          "estimates from its cycle table, not measurements):")
    print(f"{'op':>4} {'type':<22} {'MACs':>12} {'bytes':>10} {'est ms':>9}")
    for op in data["ops"]:
        print(f"{op['index']:>4} {op['type'][:22]:<22} {op['macs']:>12,} {op['bytes']:>10,} "
              f"{op['est_seconds'] * 1e3:>9.3f}")
    print(f"estimated compute: {data['est_compute_seconds'] * 1e3:.2f} ms")
    print("longest cold ranges:")
    for g in data["cold_ranges"][:5]:
        name = graph.tensors[g["tensor"]].name
        print(f"  tensor {g['tensor']} '{name}': steps {g['from_step']} -> {g['to_step']}")
    print(f"load bound:        {data['load_bound_bytes']:>10,} B at step {data['load_bound_step']}")
    print(f"working-set bound: {data['working_set_bound_bytes']:>10,} B "
          f"({data['working_set_bound_detail']})")
    return 0
