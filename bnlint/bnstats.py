"""Numeric facts about every BN of a graph, computed in one vectorised pass.

Reading and checking BN parameters one BN at a time costs tens of microseconds of numpy overhead per BN,
which dominates linting deep models. Here the raw float32 parameters of all BNs are joined into one
buffer and checked with a handful of array operations; rules ask `stats.healthy(bn)` and similar, and
only BNs that fail a check are looked at again one by one (to word the message).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bnlint.graph import Graph
from bnlint.semantics import BatchNorm, batchnorms
from bnlint.tensors import inline_float32_vector

_F32 = np.dtype("<f4")


class BNFacts(NamedTuple):
    """Per-BN booleans; None for a BN whose parameters were not in the batch (check it one by one)."""

    finite: bool            # scale, bias, mean and var are all finite
    var_nonnegative: bool   # running variance >= 0 everywhere
    foldable_numerics: bool  # epsilon >= 0, var + eps > 0, and s, t finite
    all_scale_positive: bool
    any_scale_zero: bool
    channels: int           # the length of each parameter vector


def graph_bn_facts(graph: Graph) -> dict[int, BNFacts]:
    """Facts for the BNs of `graph` whose four parameters are raw float32 vectors of one length, keyed by
    node index (cached on the graph)."""
    cached = graph.__dict__.get("_bn_facts")
    if cached is not None:
        return cached
    views = batchnorms(graph)
    lookup = graph._initializers.get if graph.parent is None else graph.initializer
    # scale, bias, mean, var of BN 0, then of BN 1, ...: one C-level pass over all of them
    every_raw = list(map(inline_float32_vector, map(lookup, [name for bn in views
                                                     for name in (bn.scale, bn.bias, bn.mean, bn.var)])))
    rows: list[BatchNorm] = []
    chunks: list[bytes] = []
    for k, bn in enumerate(views):
        raws = every_raw[4 * k:4 * k + 4]
        if None in raws or not len(raws[0]) == len(raws[1]) == len(raws[2]) == len(raws[3]):
            continue
        rows.append(bn)
        chunks.extend(raws)
    facts: dict[int, BNFacts] = {}
    if rows:
        facts = _evaluate(rows, chunks)
    graph.__dict__["_bn_facts"] = facts
    return facts


def _evaluate(rows: list[BatchNorm], chunks: list[bytes]) -> dict[int, BNFacts]:
    channels = np.array([len(chunks[4 * i]) // 4 for i in range(len(rows))])
    # chunks holds scale, bias, mean, var of BN 0, then of BN 1, ...: every 4th chunk is one parameter of all
    # BNs, so one join per parameter lines the channels of every BN up.
    scale, bias, mean, var = (np.frombuffer(b"".join(chunks[k::4]), dtype=_F32).astype(np.float64)
                              for k in range(4))
    epsilon = np.array([bn.epsilon for bn in rows])
    eps = np.repeat(epsilon, channels)
    segment_starts = np.cumsum(channels) - channels
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        denominator = var + eps
        s = scale / np.sqrt(denominator)
        t = bias - mean * s
    finite = np.isfinite(scale) & np.isfinite(bias) & np.isfinite(mean) & np.isfinite(var)
    fold_ok = np.isfinite(denominator) & (denominator > 0) & np.isfinite(s) & np.isfinite(t)

    def per_bn(flags: np.ndarray) -> np.ndarray:
        return np.logical_and.reduceat(flags, segment_starts)

    all_finite = per_bn(finite)
    var_ok = per_bn(~(var < 0))
    foldable = per_bn(fold_ok) & np.isfinite(epsilon) & (epsilon >= 0)
    positive = per_bn((scale > 0) & (denominator > 0))
    zero = np.logical_or.reduceat(scale == 0, segment_starts)
    columns = zip(all_finite.tolist(), var_ok.tolist(), foldable.tolist(), positive.tolist(), zero.tolist(),
                  channels.tolist())
    return {bn.node.index: BNFacts(*column) for bn, column in zip(rows, columns)}


def bn_facts(bn: BatchNorm) -> BNFacts | None:
    """The facts of one BN, or None when it must be checked one by one."""
    return graph_bn_facts(bn.node.graph).get(bn.node.index)
