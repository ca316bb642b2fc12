"""Import a user's model factory (`path/to/model.py:build`, `package.module:build`) and get its inputs.

The target names an attribute: an `nn.Module` instance, or a callable (function or class) called without
arguments that returns an `nn.Module` or `(module, example_inputs)`. Example inputs, in order of priority:
`--input-shape` (with `--input-dtype`), the factory's `example_inputs`, then a module attribute
`example_inputs` or `example_input_array` (PyTorch Lightning's name). A tensor is one positional input, a
tuple/list several, a dict keyword inputs.

Importing and calling the factory runs the user's code: that is the point, and the README says so.
While it runs, the file's folder (or the current directory for a dotted module) is on sys.path, prints go
to stderr so machine-readable output stays clean, and nn.Module constructions are recorded for locations.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass, field

import torch

from bnlint.errors import LoadError
from bnlint.torch_frontend.options import TorchOptions
from bnlint.torch_frontend.origins import ConstructionSites, recording_construction_sites
from bnlint.torch_frontend.sourcemap import display_source, innermost_user_frame


@dataclass
class Factory:
    """A module ready to trace, with its example inputs and where its layers were built."""

    module: torch.nn.Module
    args: tuple
    kwargs: dict = field(default_factory=dict)
    sites: ConstructionSites | None = None


def split_target(target: str) -> tuple[str, str]:
    spec, _, attr = target.rpartition(":")
    return spec, attr


@contextlib.contextmanager
def user_code_path(spec: str):
    """The factory file's folder (or the cwd for a dotted module) first on sys.path within the block."""
    folder = os.path.dirname(os.path.abspath(spec)) if spec.endswith(".py") else os.getcwd()
    saved = list(sys.path)
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.path[:] = saved


def _where(exc: BaseException, root: str) -> str:
    frames = [(f.filename, f.lineno or 0) for f in traceback.extract_tb(exc.__traceback__)]
    frame = innermost_user_frame(frames)
    return f" ({display_source(frame[0], root)}:{frame[1]})" if frame else ""


def _fail(target: str, action: str, exc: BaseException, root: str) -> LoadError:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    detail = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return LoadError(target, f"{action} raised {detail}{_where(exc, root)}")


def import_target_module(target: str, spec: str, root: str):
    if spec.endswith(".py"):
        path = os.path.abspath(spec)
        if not os.path.isfile(path):
            raise LoadError(target, f"no such file: {spec}")
        name = "bnlint_factory_" + hashlib.sha1(path.encode()).hexdigest()[:12]
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit too: a script's `sys.exit()` must not end bnlint
            sys.modules.pop(name, None)
            raise _fail(target, f"importing {spec}", exc, root) from None
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name and spec.startswith(exc.name):
            raise LoadError(target, f"cannot import {spec}: no module named {exc.name!r} "
                                    "(run bnlint from the folder that contains the package)") from None
        raise _fail(target, f"importing {spec}", exc, root) from None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        raise _fail(target, f"importing {spec}", exc, root) from None


def resolve_attribute(target: str, spec: str, module, attr: str):
    value, path = module, spec
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise LoadError(target, f"{path} has no attribute {part!r}") from None
        path = f"{path}:{part}" if path == spec else f"{path}.{part}"
    return value


def _as_inputs(target: str, value) -> tuple[tuple, dict]:
    if isinstance(value, torch.Tensor):
        return (value,), {}
    if isinstance(value, (tuple, list)):
        return tuple(value), {}
    if isinstance(value, dict):
        return (), dict(value)
    raise LoadError(target, f"example inputs must be a tensor, a tuple/list of tensors or a dict, "
                            f"not {type(value).__name__}")


def inputs_from_shapes(options: TorchOptions) -> tuple:
    generator = torch.Generator().manual_seed(0)
    tensors = []
    for i, shape in enumerate(options.input_shapes):
        dtype = getattr(torch, options.dtype_for(i))
        if dtype.is_floating_point:
            tensors.append(torch.randn(shape, generator=generator).to(dtype))
        else:
            tensors.append(torch.zeros(shape, dtype=dtype))
    return tuple(tensors)


def load_factory(target: str, options: TorchOptions) -> Factory:
    """Import and call the factory; the caller keeps `user_code_path(spec)` active while tracing."""
    spec, attr = split_target(target)
    root = options.root
    with recording_construction_sites() as sites, contextlib.redirect_stdout(sys.stderr):
        module = import_target_module(target, spec, root)
        value = resolve_attribute(target, spec, module, attr)
        example = None
        if not isinstance(value, torch.nn.Module):
            if not callable(value):
                raise LoadError(target, f"{attr} is a {type(value).__name__}, not an nn.Module or a callable "
                                        "that returns one")
            try:
                value = value()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                raise _fail(target, f"calling {attr}()", exc, root) from None
            if isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[0], torch.nn.Module):
                value, example = value
        if not isinstance(value, torch.nn.Module):
            raise LoadError(target, f"{attr}() returned {type(value).__name__}; expected an nn.Module or "
                                    "(module, example_inputs)")
    if options.input_shapes:
        args, kwargs = inputs_from_shapes(options), {}
    elif example is not None:
        args, kwargs = _as_inputs(target, example)
    else:
        attribute = next((getattr(value, n) for n in ("example_inputs", "example_input_array")
                          if getattr(value, n, None) is not None), None)
        if attribute is None:
            raise LoadError(target, "no example inputs: pass --input-shape (e.g. --input-shape 1,3,224,224), "
                                    "return (module, example_inputs) from the factory, or set "
                                    "module.example_inputs")
        args, kwargs = _as_inputs(target, attribute)
    return Factory(value, args, kwargs, sites)
