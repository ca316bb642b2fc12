"""`bnlint fix`: rewrite passes over the ONNX protobuf, one module per rewrite, run by `pipeline`."""

from bnlint.fix.pipeline import FIX_CODES, FixOutcome, fix_model

__all__ = ["FIX_CODES", "FixOutcome", "fix_model"]
