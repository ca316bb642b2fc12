"""The values of many backward folds at once: a few numpy calls for all of them instead of dozens per BN.

Per BN, reading four parameter vectors, computing s and t, and scaling a small weight costs tens of
microseconds of numpy call overhead, far more than the arithmetic on a deep, narrow model. Here the BN
parameters of all pending folds are joined into one vector each, and small float32 Conv weights of the
same shape are scaled as one stacked array. Every value comes from the same float64 operations, element
by element, as folding the BNs one at a time (bnlint.fix.fold.fold_one), so results are bit-identical;
anything off that path (other layers or types, large or external weights, a value that overflows) is
folded one at a time by fold_one, which also words any refusal.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from bnlint.foldable import Affine

_F32 = np.dtype("<f4")
_BATCH_WEIGHT_BYTES = 1 << 16  # larger weights fold alone, in row blocks (bnlint.fix.numeric.scale_rows)


class NumericsAfterBias:
    """Outcome of an absorbed fold whose BN cannot fold once its mean has the bias subtracted: the
    caller makes the BN003 rewrite and words the reason from the rewritten BN (foldable.inference_affine)."""


NUMERICS_AFTER_BIAS = NumericsAfterBias()


def fold_values(live, plans) -> list:
    """Per plan (bnlint.fix.fold.Plan): (new weight, new bias, weight type, notes), a refusal reason, or
    NUMERICS_AFTER_BIAS."""
    outcomes: list = [None] * len(plans)
    table = _affine_table(live, plans, outcomes)
    if table is None:
        return outcomes
    rows, s, t, starts, valid = table
    groups: dict[tuple, list[tuple[int, int, bytes, bytes]]] = {}
    for row, (k, ok) in enumerate(zip(rows, valid)):
        if not ok:
            outcomes[k] = NUMERICS_AFTER_BIAS
            continue
        channels = (starts[row + 1] - starts[row])
        found = _batchable(live, plans[k], channels)
        if found is None:
            begin = starts[row]
            outcomes[k] = _one(live, plans[k], Affine(s[begin:begin + channels], t[begin:begin + channels]))
        else:
            shape, weight_raw, bias_raw = found
            groups.setdefault(shape, []).append((k, starts[row], weight_raw, bias_raw))
    for shape, members in groups.items():
        _fold_group(live, plans, s, t, shape, members, outcomes)
    return outcomes


def _one(live, plan, affine: Affine):
    from bnlint.fix.fold import FoldRefused, fold_one

    try:
        return fold_one(live, plan.target, affine, absorbed=plan.deferred is not None)
    except FoldRefused as refused:
        return str(refused)


# -- BN003: new running means -------------------------------------------------------------------------
def bias_raws(live, bn, site) -> tuple[bytes, bytes] | None:
    """(mean bytes, bias bytes) when BN's mean and a Conv/ConvTranspose bias are raw float32 vectors of
    one length: the case new_means computes together. Else None (the one-by-one path)."""
    if site.layer.op_type not in ("Conv", "ConvTranspose"):
        return None
    mean_raw = _raw_f32(live, bn.mean)
    if mean_raw is None:
        return None
    bias_raw = _raw_f32(live, site.bias)
    return (mean_raw, bias_raw) if bias_raw is not None and len(bias_raw) == len(mean_raw) else None


def new_means(candidates) -> list[np.ndarray | None]:
    """mean - bias per candidate (bnlint.fix.bias.Candidate), in float64 rounded once to float32, as
    bias._remove_bias computes it; None where the result overflows float32 (that path words the refusal)."""
    if not candidates:
        return []
    mean = np.frombuffer(b"".join(c.mean_raw for c in candidates), dtype=_F32).astype(np.float64)
    bias = np.frombuffer(b"".join(c.bias_raw for c in candidates), dtype=_F32).astype(np.float64)
    values = (mean - bias).astype(_F32)
    channels = np.array([len(c.mean_raw) // 4 for c in candidates])
    ends = np.cumsum(channels)[:-1]
    starts = np.concatenate(([0], ends))
    overflow = np.logical_or.reduceat(np.isinf(values), starts).tolist()
    return [None if bad else part for part, bad in zip(np.split(values, ends), overflow)]


# -- BN affines --------------------------------------------------------------------------------------
def _raw_f32(live, name: str) -> bytes | None:
    """The little-endian float32 bytes of a 1-D initializer held in raw_data, else None."""
    tensor = live.initializer(name)
    if (tensor is None or tensor.data_type != onnx.TensorProto.FLOAT or len(tensor.dims) != 1
            or tensor.data_location == onnx.TensorProto.EXTERNAL or id(tensor) in live.detached):
        return None
    raw = tensor.raw_data
    return raw if raw and len(raw) == 4 * tensor.dims[0] else None


def _mean_raw(live, plan, bn) -> bytes | None:
    if plan.deferred is None:
        return _raw_f32(live, bn.mean)
    mean = plan.deferred.mean
    return mean.astype(_F32).tobytes() if mean.dtype == _F32 and mean.ndim == 1 else None


def _affine_table(live, plans, outcomes: list):
    """s and t of every plan whose BN parameters are raw float32 vectors of one length, as flat arrays
    (plan rows[r] owns s[starts[r]:starts[r + 1]]), with `valid` per row; the other plans are folded
    alone here, straight into `outcomes`. None when no plan is in the table."""
    rows: list[int] = []
    chunks: list[list[bytes]] = [[], [], [], []]
    epsilons: list[float] = []
    for k, plan in enumerate(plans):
        bn = plan.target.bn
        raws = (_raw_f32(live, bn.scale), _raw_f32(live, bn.bias), _mean_raw(live, plan, bn), _raw_f32(live, bn.var))
        if None in raws or not len(raws[0]) == len(raws[1]) == len(raws[2]) == len(raws[3]):
            affine = _affine_alone(plan)
            outcomes[k] = _one(live, plan, affine) if isinstance(affine, Affine) else affine
            continue
        rows.append(k)
        epsilons.append(bn.epsilon)
        for chunk, raw in zip(chunks, raws):
            chunk.append(raw)
    if not rows:
        return None
    scale, bias, mean, var = (np.frombuffer(b"".join(chunk), dtype=_F32).astype(np.float64) for chunk in chunks)
    channels = np.array([len(raw) // 4 for raw in chunks[0]])
    starts = np.concatenate(([0], np.cumsum(channels)))
    # The operations of foldable.inference_affine, on all channels at once (same values, element by element).
    denominator = var + np.repeat(np.array(epsilons, dtype=np.float64), channels)
    s = scale / np.sqrt(denominator)
    t = bias - mean * s
    fine = np.logical_and.reduceat(np.isfinite(s) & np.isfinite(t) & np.isfinite(denominator) & (denominator > 0),
                                   starts[:-1])
    valid = []
    for k, ok, eps in zip(rows, fine.tolist(), epsilons):
        # fold_target vetted the numerics of BNs without a deferred mean; the others are checked here
        valid.append(plans[k].deferred is None or (ok and bool(np.isfinite(eps)) and eps >= 0))
    return rows, s, t, starts.tolist(), valid


def _affine_alone(plan):
    """One plan's affine by foldable.inference_affine's arithmetic, with the deferred mean if any."""
    if plan.deferred is None:
        return plan.target.affine
    bn = plan.target.bn
    params = bn.params()
    if params is None or not np.isfinite(bn.epsilon) or bn.epsilon < 0:
        return NUMERICS_AFTER_BIAS
    scale, bias, var = params["scale"], params["bias"], params["var"]
    mean = np.asarray(plan.deferred.mean, dtype=np.float64)
    if scale.ndim != 1 or not scale.shape == bias.shape == mean.shape == var.shape:
        return NUMERICS_AFTER_BIAS
    denominator = var + bn.epsilon
    s = scale / np.sqrt(denominator)
    t = bias - mean * s
    if np.isfinite(s).all() and np.isfinite(t).all() and np.isfinite(denominator).all() and (denominator > 0).all():
        return Affine(s, t)
    return NUMERICS_AFTER_BIAS


# -- Conv weights ------------------------------------------------------------------------------------
def _batchable(live, plan, channels: int) -> tuple[tuple[int, ...], bytes, bytes] | None:
    """(weight shape, weight bytes, bias bytes) for a Conv fold on the stacked path, else None."""
    layer = plan.target.layer
    if layer.op_type != "Conv" or plan.target.add is not None:
        return None
    tensor = live.initializer(layer.input(1))
    if (tensor is None or tensor.data_type != onnx.TensorProto.FLOAT or len(tensor.dims) < 2
            or tensor.data_location == onnx.TensorProto.EXTERNAL or id(tensor) in live.detached):
        return None
    shape = tuple(tensor.dims)
    count = math.prod(shape)
    if shape[0] != channels or not 0 < 4 * count <= _BATCH_WEIGHT_BYTES:
        return None
    weight_raw = tensor.raw_data
    if len(weight_raw) != 4 * count:
        return None
    bias_name = "" if plan.deferred is not None else layer.input(2)
    if not bias_name:
        return shape, weight_raw, bytes(4 * channels)  # float32 zeros: the fold's zero bias, exactly
    bias_raw = _raw_f32(live, bias_name)
    if bias_raw is None or len(bias_raw) != 4 * channels:
        return None
    return shape, weight_raw, bias_raw


def _fold_group(live, plans, s_all, t_all, shape, members, outcomes) -> None:
    """W * s and b * s + t for Conv folds with same-shape float32 weights, in one stacked computation:
    the float64 products rounded once to float32, as numeric.scale_rows and cast_checked do."""
    n, channels = len(members), shape[0]
    weights = np.frombuffer(b"".join(m[2] for m in members), dtype=_F32).reshape(n, *shape)
    biases = np.frombuffer(b"".join(m[3] for m in members), dtype=_F32).astype(np.float64).reshape(n, channels)
    index = np.array([m[1] for m in members])[:, None] + np.arange(channels)
    s, t = s_all[index], t_all[index]
    new_weights = np.empty(weights.shape, dtype=_F32)
    np.multiply(weights, s.reshape(n, channels, *(1,) * (len(shape) - 1)), out=new_weights, dtype=np.float64,
                casting="unsafe")
    new_biases = (biases * s + t).astype(_F32)
    overflow = np.isinf(new_weights.reshape(n, -1)).any(axis=1) | np.isinf(new_biases).any(axis=1)
    for row, ((k, _, _, _), bad) in enumerate(zip(members, overflow.tolist())):
        if bad:  # an infinity: the one-by-one path tells overflow (refused) from infinite input (kept)
            outcomes[k] = _one(live, plans[k], Affine(s[row].copy(), t[row].copy()))
        else:
            outcomes[k] = (new_weights[row], new_biases[row], onnx.TensorProto.FLOAT, ())
