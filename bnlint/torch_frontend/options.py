"""What a PyTorch target needs besides its name: example-input shapes and dtypes, trust, the source root.

Torch-free on purpose: the CLI and LintOptions build these before anything decides to import torch.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from bnlint.errors import BnlintError

# Names accepted by --input-dtype, mapped to torch dtype attribute names.
DTYPES = {
    "float32": "float32", "float": "float32", "fp32": "float32",
    "float16": "float16", "half": "float16", "fp16": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float64": "float64", "double": "float64",
    "int64": "int64", "long": "int64", "int32": "int32", "int": "int32", "int16": "int16", "int8": "int8",
    "uint8": "uint8", "bool": "bool",
}


class TorchOptions(NamedTuple):
    """Options for PyTorch targets (ignored for ONNX files except `source_root`)."""

    input_shapes: tuple[tuple[int, ...], ...] = ()
    input_dtypes: tuple[str, ...] = ()
    trust: bool = False
    source_root: str | None = None

    @property
    def root(self) -> str:
        """The folder source paths are shown relative to (default: the current directory)."""
        return os.path.abspath(self.source_root or os.getcwd())

    def dtype_for(self, index: int) -> str:
        """One dtype for all inputs, or one per input; float32 when none is given."""
        if not self.input_dtypes:
            return "float32"
        if len(self.input_dtypes) == 1:
            return self.input_dtypes[0]
        return self.input_dtypes[index]

    @classmethod
    def from_cli(cls, *, input_shapes=(), input_dtypes=(), trust=False, source_root=None) -> TorchOptions:
        shapes = tuple(parse_shape(text) for text in input_shapes)
        dtypes = tuple(parse_dtype(text) for text in input_dtypes)
        if len(dtypes) > 1 and len(dtypes) != len(shapes):
            raise BnlintError(f"--input-dtype given {len(dtypes)} times for {len(shapes)} --input-shape; "
                              "give one dtype for all inputs or one per input")
        if source_root is not None and not os.path.isdir(source_root):
            raise BnlintError(f"--source-root {source_root}: not a folder")
        return cls(shapes, dtypes, bool(trust), source_root)


def parse_shape(text: str) -> tuple[int, ...]:
    """`1,3,224,224` (also `1x3x224x224`) as a tuple of positive ints."""
    parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise BnlintError(f"--input-shape {text!r}: expected positive integers separated by commas, e.g. 1,3,224,224")
    return dims


def parse_dtype(text: str) -> str:
    name = DTYPES.get(text.strip().lower().removeprefix("torch."))
    if name is None:
        raise BnlintError(f"--input-dtype {text!r}: unknown dtype (known: {', '.join(sorted(set(DTYPES.values())))})")
    return name
