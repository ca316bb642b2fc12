"""BN005 fix: remove Dropout nodes that are the identity at inference, in every opset variant.

Readers of the Dropout's output read its input instead. When the output is a graph output, the producer
of the input is renamed to keep the output's name. A used mask output becomes an all-true ConstantOfShape
(opset 12+, where the ONNX spec says an inference Dropout's mask is all true); before opset 12 the
inference mask is unspecified (onnxruntime returns all false), so a Dropout whose mask is read stays.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from bnlint.fix.live import LiveGraph, static_shape
from bnlint.fix.result import Change, Checkpoint, Kept, PassResult
from bnlint.graph import Node
from bnlint.semantics import dropout

CODE = "BN005"
TITLE = "remove no-op Dropout"


def run(live: LiveGraph) -> PassResult:
    result = PassResult(CODE, TITLE)
    for node in live.nodes_of("Dropout"):
        view = dropout(node)
        if view is None:
            continue
        if not view.noop:
            result.kept.append(_kept(live, node, f"it is active at inference ({view.reason})"))
            continue
        reason = _blocker(live, node, view.mask_used)
        if reason:
            result.kept.append(_kept(live, node, reason))
            continue
        result.changes.append(_remove(live, node, view.reason, view.mask_used))
    return result


def _kept(live: LiveGraph, node: Node, reason: str) -> Kept:
    return Kept(CODE, live.path, node.label, node.op_type, f"{node.display} kept: {reason}")


def _blocker(live: LiveGraph, node: Node, mask_used: bool) -> str | None:
    graph = live
    x, y = node.input(0), node.output(0)
    if graph.is_graph_output(y) and not _renamable(live, x):
        return (f"its output '{y}' is a graph output and its input '{x}' is a graph input, initializer or "
                "output, so it cannot be bypassed without an Identity")
    if mask_used and node.opset < 12:
        return ("its mask output is read, and before opset 12 the mask of an inference Dropout is not "
                "specified (onnxruntime returns all false, the ONNX reference all true)")
    return None


def _renamable(live: LiveGraph, name: str) -> bool:
    """True when `name` is produced by a node of this graph and may take another name."""
    return live.local_producer(name) is not None and not live.is_graph_output(name)


def _mask_plan(live: LiveGraph, node: Node):
    """How to make the mask: ('shape', dims) for a static shape, ('dynamic', None) via Shape."""
    shape = static_shape(live, node.output(1)) or static_shape(live, node.input(0))
    return ("shape", shape) if shape is not None else ("dynamic", None)


def _remove(live: LiveGraph, node: Node, why: str, mask_used: bool) -> Change:
    graph = live
    x, y = node.input(0), node.output(0)
    notes = []
    if mask_used:
        notes.append(_replace_mask(live, node))
    live.remove_node(node)
    if graph.is_graph_output(y):
        producer = live.local_producer(x)
        live.set_output(producer, list(producer.outputs).index(x), y)
        live.replace_uses(x, y)
        kept_name = y
    else:
        live.replace_uses(y, x)
        kept_name = x
    return Change(CODE, live.path, node.label, f"removed {node.display} ({why})", kind="remove-dropout",
                  removed_nodes=(node.label,), checkpoint=Checkpoint(y, kept_name), notes=tuple(notes))


def _replace_mask(live: LiveGraph, node: Node) -> str:
    """Produce the all-true mask (opset 12+ semantics) with ConstantOfShape, where the Dropout was."""
    mask = node.output(1)
    kind, shape = _mask_plan(live, node)
    value = numpy_helper.from_array(np.ones(1, dtype=bool))
    if kind == "shape":
        dims = live.add_array(f"{mask}_shape", np.asarray(shape, dtype=np.int64), onnx.TensorProto.INT64)
    else:
        dims = live.names.new(f"{mask}_shape")
        live.add_node("Shape", [node.input(0)], [dims], anchor=node, name=live.names.new(f"{node.label}_shape"))
    live.add_node("ConstantOfShape", [dims], [mask], anchor=node, name=live.names.new(f"{node.label}_mask"),
                  value=value)
    return f"mask output '{mask}' replaced by an all-true ConstantOfShape"
