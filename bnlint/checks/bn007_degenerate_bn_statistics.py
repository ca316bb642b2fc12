"""BN007: BatchNormalization parameters that are invalid (error) or channels that are dead (warning)."""

import numpy as np

from bnlint.bnstats import bn_facts
from bnlint.findings import Severity
from bnlint.graph import Graph
from bnlint.registry import Hit, check
from bnlint.semantics import batchnorms


def _channels(mask: np.ndarray, limit: int = 8) -> str:
    indices = np.flatnonzero(mask)
    shown = ", ".join(str(i) for i in indices[:limit])
    more = f", … ({len(indices)} in all)" if len(indices) > limit else ""
    return f"channel{'s' if len(indices) > 1 else ''} {shown}{more}"


@check("BN007")
def degenerate_bn_statistics(graph: Graph):
    for bn in batchnorms(graph):
        node = bn.node
        facts = bn_facts(bn)
        if facts is not None and facts.finite and facts.var_nonnegative and not facts.any_scale_zero and \
                np.isfinite(bn.epsilon) and bn.epsilon > 0:
            continue  # the common case, settled for all BNs of the graph at once
        params = bn.params() if bn.params_constant() else None
        problems = _problems(bn, params)
        if problems:
            yield Hit(node, f"{node.display} has degenerate statistics: " + "; ".join(problems),
                      severity=Severity.ERROR)
        if params is not None and (params["scale"] == 0).any():
            dead = params["scale"] == 0
            yield Hit(node, f"{node.display} has scale exactly 0 in {_channels(dead)}: those output channels "
                            "are the constant bias (dead channels)", severity=Severity.WARNING)


def _problems(bn, params) -> list[str]:
    problems = []
    if not np.isfinite(bn.epsilon) or bn.epsilon <= 0:
        problems.append(f"epsilon is {bn.epsilon!r} (must be > 0)")
    if params is None or _healthy(params):
        return problems
    for key in ("scale", "bias", "mean", "var"):
        bad = ~np.isfinite(params[key])
        if bad.any():
            problems.append(f"{key} is NaN or Inf in {_channels(bad)}")
    var = params["var"]
    negative = np.isfinite(var) & (var < 0)
    if negative.any() and not bn.training:
        problems.append(f"running variance is negative in {_channels(negative)}")
    return problems


def _healthy(params) -> bool:
    """The common case in one vectorised test: everything finite and no negative variance."""
    stacked = np.concatenate([params["scale"].ravel(), params["bias"].ravel(), params["mean"].ravel(),
                              params["var"].ravel()])
    return bool(np.isfinite(stacked).all()) and bool((params["var"] >= 0).all())
