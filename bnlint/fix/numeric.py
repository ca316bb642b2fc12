"""Folded parameters are computed in float64 and cast once to the model's type, with the loss measured.

A cast that overflows (a tiny-variance channel multiplies its weights past the float16 maximum) refuses
the fold; values that underflow to zero or to subnormals are counted and reported; the largest relative
rounding error of the cast is reported for float16 and bfloat16. Large weights are processed in row
blocks so folding a multi-GB tensor never holds a float64 copy of all of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from bnlint.fix.spill import new_array

_BLOCK_ELEMENTS = 1 << 22  # float64 working set per block: 32 MiB


@dataclass
class CastStats:
    """What casting float64 results to the model's type cost."""

    dtype: str
    max_rel_error: float = 0.0
    underflow: int = 0
    subnormal: int = 0

    def merge(self, other: CastStats) -> None:
        self.max_rel_error = max(self.max_rel_error, other.max_rel_error)
        self.underflow += other.underflow
        self.subnormal += other.subnormal

    def notes(self) -> list[str]:
        notes = []
        if self.dtype in ("float16", "bfloat16"):
            notes.append(f"{self.dtype} rounding of folded values: max relative error {self.max_rel_error:.2e} "
                         "(normal range)")
        if self.underflow:
            notes.append(f"{self.underflow} folded value(s) underflow to zero in {self.dtype}")
        if self.subnormal:
            notes.append(f"{self.subnormal} folded value(s) are subnormal in {self.dtype}")
        return notes


class CastRefused(Exception):
    """The folded values cannot be represented in the model's type; the message is the reason."""


def np_dtype(data_type: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(data_type))


def finfo(dtype: np.dtype):
    """Float limits, also for bfloat16 (an ml_dtypes type numpy's finfo does not know)."""
    try:
        return np.finfo(dtype)
    except ValueError:
        import ml_dtypes

        return ml_dtypes.finfo(dtype)


def dtype_name(data_type: int) -> str:
    return onnx.TensorProto.DataType.Name(data_type).lower()


FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
               onnx.TensorProto.DOUBLE)


def cast_checked(values: np.ndarray, data_type: int, what: str, stats: CastStats | None = None) -> np.ndarray:
    """float64 `values` cast to `data_type`; raises CastRefused when a finite value overflows.

    Written without boolean-mask indexing (which copies): folding a multi-GB weight stays memory-bound."""
    target = np_dtype(data_type)
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        cast = values.astype(target)
        if target.kind != "f" and target.name != "bfloat16":
            return cast
        if np.isinf(cast).any():
            finite = np.isfinite(values)
            overflow = finite & np.isinf(cast)
            if overflow.any():
                largest = float(np.max(np.abs(np.where(finite, values, 0.0))))
                raise CastRefused(f"folded {what} overflow {dtype_name(data_type)} "
                                  f"(largest |value| {largest:.3g} > {float(finfo(target).max):.5g})")
        if stats is None or target.itemsize >= 4:
            return cast  # float32/float64 results: rounding is at the model's own precision, nothing to report
        nonzero = values != 0
        stats.underflow += int(np.count_nonzero((cast == 0) & nonzero))
        magnitude = np.abs(cast).astype(np.float64)
        tiny = float(finfo(target).tiny)
        subnormal = (magnitude < tiny) & (magnitude > 0)
        stats.subnormal += int(np.count_nonzero(subnormal))
        relative = np.abs(cast.astype(np.float64) - values) / np.abs(values)
        relative = np.where((magnitude >= tiny) & np.isfinite(relative), relative, 0.0)
        if relative.size:
            stats.max_rel_error = max(stats.max_rel_error, float(relative.max()))
    return cast


def scale_rows(weight: np.ndarray, factor_for_rows: Callable[[slice], np.ndarray], data_type: int, what: str,
               stats: CastStats) -> np.ndarray:
    """weight * factor_for_rows(rows), multiplied in float64 and rounded once to `data_type`, in blocks of
    rows along axis 0 (one fused multiply per block: no float64 copy of the weight is ever made). Callers
    silence numpy's overflow warnings (the pipeline does): overflow is detected and refused here."""
    target = np_dtype(data_type)
    out = new_array(weight.shape, target)  # on disk when the model does not fit in memory (fix.spill)
    if weight.ndim == 0 or weight.size == 0:
        return cast_checked(weight.astype(np.float64) * factor_for_rows(slice(None)), data_type, what, stats)
    per_row = max(1, weight.size // weight.shape[0])
    block = max(1, _BLOCK_ELEMENTS // per_row)
    for start in range(0, weight.shape[0], block):
        rows = slice(start, min(weight.shape[0], start + block))
        factor = factor_for_rows(rows)
        np.multiply(weight[rows], factor, out=out[rows], dtype=np.float64, casting="unsafe")
        if target.itemsize < 4 or np.isinf(out[rows]).any():
            out[rows] = cast_checked(weight[rows].astype(np.float64) * factor, data_type, what, stats)
    return out
