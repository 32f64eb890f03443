"""ONNX kernels for the arena machine: each op run as a one-node model in onnxruntime.

An IR op is matched to its ONNX node by output value names (the frontend keeps
ONNX value names as tensor names), falling back to the node name. The one-node
model carries the node's constant inputs as initializers, so weights stay out of
the arena. Graph optimisation is off for the one-node sessions and for the whole
model alike: both then run the same unfused kernels, and a float model agrees to
rounding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from backends.executor.common import numpy_dtype
from planner.errors import PlannerError
from planner.ir import Graph, Op


def _session(model_bytes: bytes, what: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # Many tiny sessions on a shared machine: one thread each is faster and kinder.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "error")
        raise PlannerError(f"onnxruntime cannot run {what}: {first}") from None


class OnnxKernels:
    """One cached onnxruntime session per op of an ONNX model."""

    def __init__(self, graph: Graph, model_path: str | Path):
        import onnx
        from onnx import numpy_helper

        self.graph = graph
        self.path = Path(model_path)
        try:
            self.model = onnx.load(str(self.path))
        except Exception as exc:
            raise PlannerError(f"{self.path}: cannot read ONNX model: {exc}") from None
        self.constants: dict[str, Any] = {i.name: i for i in self.model.graph.initializer}
        for node in self.model.graph.node:
            # Constant nodes a frontend may have folded into constant tensors.
            if node.op_type == "Constant" and len(node.output) == 1:
                for a in node.attribute:
                    if a.name == "value":
                        arr = numpy_helper.to_array(a.t)
                        self.constants[node.output[0]] = numpy_helper.from_array(
                            arr, node.output[0])
        self.by_outputs = {tuple(o for o in n.output if o): n for n in self.model.graph.node}
        self.by_name = {n.name: n for n in self.model.graph.node if n.name}
        self._cache: dict[int, tuple[Any, list[int], list[str]]] = {}

    def _node(self, op: Op):
        outs = tuple(self.graph.tensors[t].name for t in op.outputs if t >= 0)
        node = self.by_outputs.get(outs) or self.by_name.get(op.name)
        if node is None:
            raise PlannerError(f"op {op.index} '{op.name}' matches no node of {self.path}")
        return node

    def _one_node(self, op: Op):
        """Session, tensor ids it takes as inputs (in order), output names."""
        if op.index in self._cache:
            return self._cache[op.index]
        from onnx import helper

        node = self._node(op)
        names = {self.graph.tensors[t].name: t for t in op.inputs if t >= 0}
        inputs, feeds, inits = [], [], []
        for name in dict.fromkeys(n for n in node.input if n):
            if name in self.constants and (name not in names or
                                           not self.graph.tensors[names[name]].planned):
                inits.append(self.constants[name])
                continue
            if name not in names:
                raise PlannerError(f"op {op.index}: input '{name}' is not a graph tensor")
            t = self.graph.tensors[names[name]]
            inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(numpy_dtype(t)), list(t.shape)))
            feeds.append(t.id)
        by_name = {self.graph.tensors[t].name: self.graph.tensors[t] for t in op.outputs if t >= 0}
        outputs = []
        for o in (o for o in node.output if o):
            if o not in by_name:
                raise PlannerError(f"op {op.index}: output '{o}' is not a graph tensor")
            outputs.append(helper.make_tensor_value_info(
                o, helper.np_dtype_to_tensor_dtype(numpy_dtype(by_name[o])), None))
        g = helper.make_graph([node], f"op{op.index}", inputs, outputs, initializer=inits)
        model = helper.make_model(g, opset_imports=list(self.model.opset_import),
                                  ir_version=self.model.ir_version)
        sess = _session(model.SerializeToString(), f"op {op.index} {op.op_type}")
        self._cache[op.index] = (sess, feeds, [o for o in node.output if o])
        return self._cache[op.index]

    def compute(self, op: Op, inputs: Sequence[np.ndarray | None]) -> list[np.ndarray | None]:
        sess, feeds, out_names = self._one_node(op)
        values = {t: v for t, v in zip(op.inputs, inputs, strict=True) if t >= 0}
        feed = {}
        for t in feeds:
            if values.get(t) is None:
                raise PlannerError(f"op {op.index}: no value for input tensor {t}")
            feed[self.graph.tensors[t].name] = values[t]
        got = dict(zip(out_names, sess.run(out_names, feed), strict=True))
        return [got.get(self.graph.tensors[t].name) if t >= 0 else None for t in op.outputs]

    def reference(self, inputs: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
        sess = _session(self.model.SerializeToString(), str(self.path))
        init = set(self.constants)
        feed = {}
        for t in self.graph.inputs:
            name = self.graph.tensors[t].name
            if name not in init:
                feed[name] = np.asarray(inputs[t], dtype=numpy_dtype(self.graph.tensors[t]))
        names = [self.graph.tensors[t].name for t in self.graph.outputs]
        return dict(zip(self.graph.outputs, sess.run(names, feed), strict=True))
