"""Fold every BN of a plain deep graph in a few bulk steps: the pipeline's fast path.

Deep CNNs are mostly Conv -> BN blocks in which every BN folds. The general passes decide and edit BN by
BN through the LiveGraph's tables, which costs ~150 us of Python per BN against ~8 us per block for
onnx.load + onnx.save. Here one pass over the BNs checks that the whole graph is of that plain kind, the
arithmetic runs stacked (the operations of bnlint.fix.batched, element by element), and the node,
initializer and value_info lists are rewritten once each.

The result is exactly what the general passes make of such a graph, tensors, names, order and report
alike: BN003 removes each Conv bias into its BN's mean and BN004's fold absorbs that rewrite (so the new
mean never appears), then the BN goes and the Conv takes new weights and the BN's output name. Anything
else (a BN that would be kept, BN chains, Identity, Dropout or MaxPool to rewrite, subgraphs, IR < 4,
parameters that are not inline float32 vectors, weights past the stacked size, a value that overflows)
makes `fold_all` return False before it has changed anything, and the general passes run as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from bnlint.fix import bias, fold
from bnlint.fix.live import LiveGraph, _delete_flagged, _delete_where
from bnlint.fix.result import Change, Checkpoint, PassResult
from bnlint.graph import ONNX_DOMAINS
from bnlint.tensors import inline_float32_vector

ENABLED = True  # tests switch the fast path off to compare it with the general passes
_F32 = np.dtype("<f4")
_FLOAT = onnx.TensorProto.FLOAT
_EXTERNAL = onnx.TensorProto.EXTERNAL
_MAX_WEIGHT_BYTES = 1 << 16  # bnlint.fix.batched folds larger weights alone, with their own checks
_BN_ATTRIBUTES = {"epsilon": onnx.AttributeProto.FLOAT, "momentum": onnx.AttributeProto.FLOAT,
                  "training_mode": onnx.AttributeProto.INT}
# Readers of a BN's output that make BN003 rewrite at once (BN008 may merge the BN) instead of deferring.
_NOT_DEFERRED_READERS = ("BatchNormalization", "Identity")


@dataclass(slots=True)
class Block:
    """One Conv -> BN pair to fold: node indices and names as loaded, and the raw float32 bytes of the
    BN's four parameters and of the Conv's bias (None when it has none)."""

    bn: int
    conv: int
    bn_label: str
    conv_label: str
    y: str  # the BN's output, which the Conv takes over
    x: str  # the Conv's output, which goes away
    weight: str
    bias: str  # the Conv's bias ('' when it has none)
    epsilon: float
    shape: tuple[int, ...]  # the weight's
    params: tuple[bytes, bytes, bytes, bytes]  # scale, bias, mean, var
    bias_raw: bytes | None


def fold_all(live: LiveGraph, codes, present: set[str], results: dict) -> bool:
    """Fold every BN of `live` in bulk when the graph qualifies (see the module docstring); then the
    graph is committed and the changes are in `results` (keyed as in the pipeline). False: nothing
    changed."""
    if not ENABLED or not _graph_qualifies(live, codes, present):
        return False
    blocks = _blocks(live)
    if not blocks:
        return False
    values = _values(live, blocks)
    if values is None:
        return False
    weights, biases = values
    _rewrite(live, blocks, weights, biases, results)
    return True


def _graph_qualifies(live: LiveGraph, codes, present: set[str]) -> bool:
    """Only the BN003 + BN004 rewrites can apply, and the tables describe the protobuf one to one."""
    return (live.parent is None and live.ir_version >= 4 and "BN003" in codes and "BN004" in codes
            and "BatchNormalization" in present
            and not ("BN005" in codes and "Dropout" in present) and not ("BN009" in codes and "MaxPool" in present)
            and not live._subgraph_owners and live.opset("") >= 9 and live.names.graphs == [live]
            and len(live._initializers) == len(live.proto.initializer)
            and not live._producer_edits and not live._consumer_edits)


def _blocks(live: LiveGraph) -> list[Block] | None:
    """Every standard BN as a Block, or None as soon as one does not fit the plain pattern."""
    blocks = []
    domains = live._domains
    # initializers that something else defines or describes: their dims need not be their shape
    shadowed = live._input_set | live._producers.keys() | live._value_info.keys()
    for i in live._op_index.get("BatchNormalization", ()):
        if domains[i] not in ONNX_DOMAINS:
            continue  # not a BN to bnlint: a node like any other
        block = _block(live, i, shadowed)
        if block is None:
            return None
        blocks.append(block)
    return blocks


def _block(live: LiveGraph, i: int, shadowed: set[str]) -> Block | None:
    """The Conv -> BN pair ending at BN node i, when the general passes would defer BN003 into the fold
    and fold it (the numeric checks come later, for all blocks at once)."""
    inputs, outputs = live._inputs[i], live._outputs[i]
    if len(inputs) != 5 or not outputs or not outputs[0] or any(outputs[1:]):
        return None
    epsilon = _epsilon(live._protos[i])
    if epsilon is None:
        return None
    x, y = inputs[0], outputs[0]
    conv = live._producers.get(x)
    consumers, op_types = live._consumers, live._op_types
    if (conv is None or op_types[conv] != "Conv" or live._domains[conv] not in ONNX_DOMAINS
            or consumers.get(x) != [i] or x in live.output_names or len(live._outputs[conv]) != 1
            or x in live._initializers):
        return None
    for reader in consumers.get(y, ()):
        if op_types[reader] in _NOT_DEFERRED_READERS:
            return None
    conv_inputs = live._inputs[conv]
    if not 2 <= len(conv_inputs) <= 3:
        return None
    weight, conv_bias = conv_inputs[1], conv_inputs[2] if len(conv_inputs) == 3 else ""
    initializers = live._initializers
    params = (_vector(initializers, inputs[1], shadowed), _vector(initializers, inputs[2], shadowed),
              _vector(initializers, inputs[3], shadowed), _vector(initializers, inputs[4], shadowed))
    size = len(params[0] or b"")  # bytes per vector: 4 x channels
    if not size or None in params or not len(params[1]) == len(params[2]) == len(params[3]) == size:
        return None
    bias_raw = _vector(initializers, conv_bias, shadowed) if conv_bias else None
    if conv_bias and (bias_raw is None or len(bias_raw) != size):
        return None
    tensor = initializers.get(weight)
    if (tensor is None or weight in shadowed or tensor.data_type != _FLOAT or tensor.data_location == _EXTERNAL
            or len(tensor.dims) < 2):
        return None
    shape = tuple(tensor.dims)
    if 4 * shape[0] != size or not 0 < len(tensor.raw_data) == 4 * math.prod(shape) <= _MAX_WEIGHT_BYTES:
        return None
    return Block(i, conv, live.label_at(i), live.label_at(conv), y, x, weight, conv_bias, epsilon, shape, params,
                 bias_raw)


def _vector(initializers: dict, name: str, shadowed: set[str]) -> bytes | None:
    """The raw bytes of an inline 1-D float32 initializer (checked against its length), else None."""
    return None if name in shadowed else inline_float32_vector(initializers.get(name))


def _epsilon(proto: onnx.NodeProto) -> float | None:
    """The BN's epsilon when it runs in inference mode with only attributes of the expected types."""
    epsilon = 1e-5
    for attribute in proto.attribute:
        if _BN_ATTRIBUTES.get(attribute.name) != attribute.type or attribute.ref_attr_name:
            return None
        if attribute.name == "epsilon":
            epsilon = attribute.f
        elif attribute.name == "training_mode" and attribute.i != 0:
            return None
    return epsilon


# -- arithmetic ----------------------------------------------------------------------------------------
def _as_f64(raws) -> np.ndarray:
    """Raw float32 vectors, end to end, as float64."""
    return np.frombuffer(b"".join(raws), dtype=_F32).astype(np.float64)


def _values(live: LiveGraph, blocks: list[Block]):
    """(new weights, new biases) per block, or None when any BN would be refused or any value overflows.

    The same float64 operations as the general passes, element by element: the BN checks of
    bnlint.bnstats (with the loaded mean), BN003's new mean (mean - bias rounded once to float32,
    bnlint.fix.batched.new_means), the affine map with that mean and the stacked Conv fold
    (batched._affine_table and _fold_group; the absorbed bias leaves a zero bias)."""
    scale, shift, mean, var = (_as_f64([b.params[k] for b in blocks]) for k in range(4))
    channels = np.array([b.shape[0] for b in blocks])
    starts = np.concatenate(([0], np.cumsum(channels)[:-1]))
    epsilons = np.array([b.epsilon for b in blocks], dtype=np.float64)
    if not (np.isfinite(epsilons).all() and (epsilons >= 0).all()):
        return None
    denominator = var + np.repeat(epsilons, channels)
    s = scale / np.sqrt(denominator)
    if not (_all_finite(s, denominator, shift - mean * s) and (denominator > 0).all()):
        return None  # fold_target would keep a BN (bnlint.bnstats / foldable.inference_affine)
    conv_bias = np.zeros(len(s))
    with_bias = np.array([b.bias_raw is not None for b in blocks])
    if with_bias.any():
        conv_bias[np.repeat(with_bias, channels)] = _as_f64([b.bias_raw for b in blocks if b.bias_raw is not None])
    new_mean = (mean - conv_bias).astype(_F32)
    if np.isinf(new_mean).any():
        return None  # BN003 refuses that bias removal
    t = shift - new_mean.astype(np.float64) * s
    if not _all_finite(t):
        return None
    new_biases = (np.zeros(len(s)) * s + t).astype(_F32)
    if np.isinf(new_biases).any():
        return None
    weights = _scaled_weights(live, blocks, s, starts)
    if weights is None:
        return None
    return weights, np.split(new_biases, starts[1:])


def _all_finite(*arrays: np.ndarray) -> bool:
    return all(np.isfinite(array).all() for array in arrays)


def _scaled_weights(live: LiveGraph, blocks: list[Block], s: np.ndarray, starts: np.ndarray) -> list | None:
    """W * s per block, multiplied in float64 and rounded once to float32, stacked per weight shape."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, block in enumerate(blocks):
        groups.setdefault(block.shape, []).append(k)
    weights: list = [None] * len(blocks)
    for shape, members in groups.items():
        n, channels = len(members), shape[0]
        initializers = live._initializers
        stacked = np.frombuffer(b"".join([initializers[blocks[k].weight].raw_data for k in members]),
                                dtype=_F32).reshape(n, *shape)
        index = starts[members][:, None] + np.arange(channels)
        factors = s[index].reshape(n, channels, *(1,) * (len(shape) - 1))
        scaled = np.empty(stacked.shape, dtype=_F32)
        np.multiply(stacked, factors, out=scaled, dtype=np.float64, casting="unsafe")
        if np.isinf(scaled).any():
            return None
        for row, k in enumerate(members):
            weights[k] = scaled[row]
    return weights


# -- the rewrite ---------------------------------------------------------------------------------------
def _rewrite(live: LiveGraph, blocks: list[Block], weights: list, biases: list, results: dict) -> None:
    """Name the new tensors as the general passes would (BN003's reserved means first, then each fold's
    weight and bias), edit the Conv nodes, drop the BNs and what only they read, and report."""
    new_name = live.names.new  # nothing is edited yet, so it answers as for the general passes
    means = {k: new_name(f"{b.bn_label}_mean_nobias") for k, b in enumerate(blocks) if b.bias}
    new_names = [(new_name(f"{b.conv_label}_weight_bnfold"), new_name(f"{b.conv_label}_bias_bnfold"))
                 for b in blocks]
    protos = live._protos
    for block, (weight_name, bias_name) in zip(blocks, new_names):
        conv = protos[block.conv]
        conv.input[1] = weight_name
        if len(conv.input) == 3:
            conv.input[2] = bias_name
        else:
            conv.input.append(bias_name)
        conv.output[0] = block.y
    removed = {b.bn for b in blocks}
    _delete_flagged(live.proto.node, [i in removed for i in range(live.original_count)])
    doomed = _unread_initializers(live, blocks)
    reserved_bytes = sum(4 * b.shape[0] for b in blocks if b.bias)
    live.initializers_added.extend(means.values())
    _replace_initializers(live, doomed, new_names, weights, biases)
    live.initializers_removed.extend(means.values())  # reserved by BN003, abandoned by the fold
    live.bytes_added += reserved_bytes
    live.bytes_removed += reserved_bytes
    if live.proto.value_info:
        gone = {b.x for b in blocks}
        _delete_where(live.proto.value_info, lambda v: v.name in gone)
    live._removed_indices = removed
    _report(live, blocks, means, new_names, results)


def _unread_initializers(live: LiveGraph, blocks: list[Block]) -> dict[str, int]:
    """Initializers the rewrite leaves without readers, with their sizes: BN parameters and replaced Conv
    weights and biases that no other node reads (one that was unread before stays: the user's business)."""
    consumers, inputs = live._consumers, live._inputs
    doomed: dict[str, int] = {}
    shared: dict[str, tuple[int, set[int]]] = {}  # read by several nodes: size, the nodes that stop reading it

    def drop(name: str, node: int, size: int) -> None:
        if len(consumers[name]) == 1:  # `node` was its only reader
            doomed[name] = size
        else:
            shared.setdefault(name, (size, set()))[1].add(node)

    for block in blocks:
        vector = 4 * block.shape[0]
        for name in inputs[block.bn][1:]:
            drop(name, block.bn, vector)
        data = inputs[block.conv][0]  # the Conv keeps reading this one
        if block.weight != data:
            drop(block.weight, block.conv, 4 * math.prod(block.shape))
        if block.bias and block.bias != data:
            drop(block.bias, block.conv, vector)
    for name, (size, gone) in shared.items():
        if all(i in gone for i in consumers[name]):
            doomed[name] = size
    for name in live.output_names.intersection(doomed):
        del doomed[name]
    return doomed


def _replace_initializers(live: LiveGraph, doomed: dict[str, int], new_names: list, weights: list,
                          biases: list) -> None:
    """Remove the doomed initializers (keeping the others' order), then append the new ones in order."""
    flags = [name in doomed for name in live._initializer_names]
    live.initializers_removed.extend(name for name, flag in zip(live._initializer_names, flags) if flag)
    live.bytes_removed += sum(doomed.values())
    initializer = live.proto.initializer
    _delete_flagged(initializer, flags)
    added = live.initializers_added
    for (weight_name, bias_name), weight, new_bias in zip(new_names, weights, biases):
        for name, array in ((weight_name, weight), (bias_name, new_bias)):
            tensor = initializer.add()
            tensor.name = name
            tensor.data_type = _FLOAT
            tensor.dims.extend(array.shape)
            tensor.raw_data = array.tobytes()
            added.append(name)
            live.bytes_added += array.nbytes


def _report(live: LiveGraph, blocks: list[Block], means: dict, new_names: list, results: dict) -> None:
    """The Changes the general passes report, in their order."""
    removals, folds = PassResult(bias.CODE, bias.TITLE), PassResult(fold.CODE, fold.TITLE)
    path = live.path
    for k, block in enumerate(blocks):
        bn_display, conv_display = f"BatchNormalization '{block.bn_label}'", f"Conv '{block.conv_label}'"
        checkpoint = Checkpoint(block.y, block.y)
        if block.bias:
            removals.changes.append(Change(
                bias.CODE, path, block.bn_label,
                f"removed bias '{block.bias}' of {conv_display} and subtracted it from the running mean of "
                f"{bn_display}", kind="remove-bias", new_tensors=(means[k],), checkpoint=checkpoint))
        folds.changes.append(Change(
            fold.CODE, path, block.bn_label, f"folded {bn_display} into {conv_display}", kind="fold",
            removed_nodes=(block.bn_label,), new_tensors=new_names[k], checkpoint=checkpoint))
    results[bias.CODE + bias.TITLE].extend(removals)
    results[fold.CODE + fold.TITLE].extend(folds)
