"""Prove two models compute the same function by running both with onnxruntime.

Both run on the CPU provider with graph optimizations disabled (so onnxruntime's own fusions cannot hide
or cause a difference), one intra-op thread and sequential execution (so results are deterministic), on
several seeded random input sets plus optional real data from an .npz file.

Default tolerance: both models are compared with a float64 copy of the first one (bnlint.reference64).
Per output, errors are measured relative to the largest |value| of the same channel (axis 1; the whole
tensor for rank < 2), floored at 1e-3 of the output's largest |value|:
    err(M) = max |M - ref| / scale(channel)
and the second model passes when err(second) <= 8 * err(first) + 4 * u, with u the unit roundoff of the
output's type. The copy costs more than both sessions together, so it is built only when needed: each
model gets one session that runs every input set, and when the two agree within 4u of each channel's
scale the rule above is implied whatever err(first) is (agreement_limit), so they pass without it.
Rounding errors of two equivalent computations are random draws (a fold reassociates
sums), so a near miss (within 16x of the limit) is re-checked on 12 more input sets pooled with the
first. A wrong fold of a tiny-variance channel is caught (its channel scale is its own), and a valid
fold of a huge-scale channel passes (its errors are measured against its own scale), where a fixed atol
gets one of the two wrong. When no float64 copy can run, a fixed tolerance is used instead and the
report says so; --rtol/--atol choose a fixed tolerance explicitly.

onnxruntime runs on files from contributors, so the CLI runs the whole comparison in one child process
(`compare_isolated`, bnlint.isolation) under a wall-clock timeout and an address-space cap (by default
MEMORY_FLOOR plus MEMORY_FACTOR times the bytes of both models' tensors): a crash, a hang or a memory bomb
becomes a one-line error (exit 2) instead of a dead or swapping machine. That child forks a helper that
builds and runs the float64 copy while it creates and runs the two sessions (the two share the cap and
the helper dies with the child); the helper is cancelled when the models agree without it. `fix` starts
that child before it rewrites (`start_verification`): the first model's half (onnxruntime's import, its
session and outputs, the helper) overlaps the rewrite, and `finish` hands over the rewritten file. The
child gets the first model's ModelInterface instead of parsing the file again.

onnxruntime reads models up to some IR version (13 for 1.31) while onnx writes a newer one by default (14
for 1.23); sessions run on a copy stamped with the highest IR version onnxruntime reads when the model's
opsets allow it (the IR version a model needs follows from its opsets, onnx.helper.VERSION_TABLE).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from bnlint.errors import BnlintError
from bnlint.onnx_loader import iter_all_tensors, load_onnx, model_size_limit
from bnlint.report.safe_text import printable
from bnlint.tensors import tensor_nbytes

K_FACTOR = 8.0
FLOOR_ULPS = 4.0
SCALE_FLOOR = 1e-3
DEFAULT_BATCH = 2
DEFAULT_DIM = 32
DEFAULT_INT_HIGH = 2
# (rtol, atol as a fraction of the channel's largest |value|) when no float64 reference can run
FALLBACK_TOLERANCE = {"float64": (1e-9, 1e-10), "float32": (1e-4, 1e-5), "float16": (1e-2, 1e-3),
                      "bfloat16": (5e-2, 1e-2)}
_UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
DEFAULT_TIMEOUT = 600.0  # seconds for one isolated verification run
LIMIT_HINTS = {"timeout_hint": "raise it with --verify-timeout", "memory_hint": "raise it with --verify-memory"}
MEMORY_FLOOR = 4 << 30  # address space an isolated verification may add, besides MEMORY_FACTOR x tensor bytes
HUGE_PAGES_FROM = 512 << 20  # models this large (tensor bytes of both) verify in a child with huge-page malloc
MEMORY_FACTOR = 16  # sessions, the float64 reference (2x) and its serialized copies hold several copies


class VerifyError(BnlintError):
    """The models cannot be run or compared (exit 2)."""


@dataclass
class VerifyOptions:
    dims: dict[str, int] = field(default_factory=dict)
    inputs: str | None = None
    rtol: float | None = None
    atol: float | None = None
    seed: int = 0
    runs: int = 3
    timeout: float | None = DEFAULT_TIMEOUT  # isolated runs only; None: no limit
    memory: int | None = None  # isolated runs' address-space cap in bytes; None: automatic; 0: no cap
    max_model_size: int | None = None  # model-file size cap, applied in the child too

    @property
    def fixed(self) -> bool:
        return self.rtol is not None or self.atol is not None


@dataclass
class OutputCheck:
    name: str
    shape: tuple
    dtype: str
    max_abs: float = 0.0
    max_rel: float = 0.0
    err_first: float | None = None
    err_second: float | None = None
    limit: float | None = None
    violations: int = 0
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "max_abs": self.max_abs,
                "max_rel": self.max_rel, "err_original": self.err_first, "err_rewritten": self.err_second,
                "limit": self.limit, "violations": self.violations, "ok": self.ok, "problem": self.problem}


@dataclass
class VerifyResult:
    ok: bool
    outputs: list[OutputCheck]
    mode: str
    notes: list[str]
    input_sets: int
    failing_set: int | None = None
    divergence: str | None = None

    def to_dict(self) -> dict:
        return {"ok": self.ok, "mode": self.mode, "notes": self.notes, "input_sets": self.input_sets,
                "outputs": [o.to_dict() for o in self.outputs], "divergence": self.divergence}


# -- sessions --------------------------------------------------------------------------------------
def session(model: str | onnx.ModelProto, external_folder: str | None = None):
    """A deterministic CPU session; `model` is a path, or a proto whose external data lives in
    `external_folder`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 4  # fatal only: bnlint reports failures itself, in one line
    if external_folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", external_folder)
    source = model if isinstance(model, str) else model.SerializeToString()
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types
        match = _IR_REFUSED.search(str(exc))
        if match is None:
            raise
    lowered = _with_ir_version(model, int(match.group(2)))
    if isinstance(model, str) and external_folder is None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                         str(Path(model).resolve().parent))
    return ort.InferenceSession(lowered, options, providers=["CPUExecutionProvider"])


_IR_REFUSED = re.compile(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)")
_OPSET_COLUMN = {"": 2, "ai.onnx": 2, "ai.onnx.ml": 3, "ai.onnx.training": 4, "ai.onnx.preview.training": 4}


def minimum_ir_version(model: onnx.ModelProto) -> int:
    """The lowest IR version whose release defines every opset the model imports (domains onnx does not
    version are ignored); a newer opset than onnx knows needs a newer IR than it writes."""
    needed = 3
    for opset in model.opset_import:
        column = _OPSET_COLUMN.get(opset.domain)
        if column is None:
            continue
        irs = [row[1] for row in onnx.helper.VERSION_TABLE if len(row) > column and row[column] >= opset.version]
        needed = max(needed, min(irs) if irs else onnx.IR_VERSION + 1)
    return needed


def _with_ir_version(model: str | onnx.ModelProto, ir_version: int) -> bytes:
    """The model serialized with `ir_version` (lower than its own), for onnxruntime only; VerifyError when
    its opsets need a newer IR. External data is not read (onnxruntime reads it from the model's folder)."""
    proto = load_onnx(model) if isinstance(model, str) else model
    needed = minimum_ir_version(proto)
    if needed > ir_version:
        import onnxruntime as ort

        opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in proto.opset_import)
        raise VerifyError(f"IR version {proto.ir_version} is newer than onnxruntime {ort.__version__} "
                          f"reads ({ir_version}), and its opsets ({opsets}) need IR version {needed}")
    original = proto.ir_version
    proto.ir_version = ir_version
    try:
        return proto.SerializeToString()
    finally:
        proto.ir_version = original


# onnxruntime's "1 : FAIL : " status prefix, and the C++ source location and function signature it puts
# before (or inside) a message: "/onnxruntime_src/.../model.cc:256 onnxruntime::Model::Model(...) "
_ORT_STATUS = re.compile(r"^\d+ : [A-Z_]+ : ")
_ORT_SOURCE = re.compile(r"\S*onnxruntime_src/\S+:\d+ [^()]*?\([^()]*\)(?: const)? ")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().replace("[ONNXRuntimeError] : ", "")
    text = _ORT_SOURCE.sub("", _ORT_STATUS.sub("", text))
    return text.splitlines()[0] if text else type(exc).__name__


def _mentions_memory(text: str) -> bool:
    return any(word in text.lower() for word in ("failed to allocate", "bad_alloc", "bad allocation", "out of memory"))


def _open(path: str, label: str):
    try:
        return session(path)
    except Exception as exc:  # onnxruntime raises its own exception types for every failure
        raise VerifyError(f"{label}: onnxruntime cannot load the model: {_first_line(exc)}") from None


def _run(sess, feed: dict, label: str, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    try:
        outputs = sess.run(list(names) if names else None, feed)
    except Exception as exc:
        text = _first_line(exc)
        hint = "" if _mentions_memory(text) else \
            " (set dynamic dimensions with --dim NAME=VALUE, or give real inputs with --inputs)"
        raise VerifyError(f"{label}: onnxruntime failed to run the model: {text}{hint}") from None
    wanted = list(names) if names else [o.name for o in sess.get_outputs()]
    return dict(zip(wanted, outputs))


# -- inputs ------------------------------------------------------------------------------------------
def feedable_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs a caller must feed (IR-3 style inputs backed by an initializer are not)."""
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def _np_type(value: onnx.ValueInfoProto, label: str) -> np.dtype:
    if not value.type.HasField("tensor_type"):
        raise VerifyError(f"{label}: input '{value.name}' is not a tensor; give real inputs with --inputs")
    elem = value.type.tensor_type.elem_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))
    except (KeyError, ValueError, TypeError):
        raise VerifyError(f"{label}: input '{value.name}' has type "
                          f"{onnx.TensorProto.DataType.Name(elem)}, which bnlint cannot generate") from None
    if dtype.kind in "OSU":
        raise VerifyError(f"{label}: input '{value.name}' is a string tensor; give real inputs with --inputs")
    return dtype


def _input_shape(value: onnx.ValueInfoProto, dims: dict[str, int]) -> tuple[int, ...]:
    shape = []
    tensor_type = value.type.tensor_type
    for axis, dim in enumerate(tensor_type.shape.dim if tensor_type.HasField("shape") else ()):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            shape.append(dim.dim_value)
        elif dim.dim_param and dim.dim_param in dims:
            shape.append(dims[dim.dim_param])
        else:
            shape.append(DEFAULT_BATCH if axis == 0 else DEFAULT_DIM)
    return tuple(shape)


def _index_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """Exclusive upper bounds for integer inputs used as Gather indices into a constant table."""
    gathers = [node for node in model.graph.node
               if node.op_type in ("Gather", "GatherElements") and len(node.input) > 1]
    if not gathers:  # the common case: no table of 80000 initializers' dims to build
        return {}
    tables = {t.name: tuple(t.dims) for t in model.graph.initializer}
    bounds: dict[str, int] = {}
    for node in gathers:
        if node.input[0] in tables:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            dims = tables[node.input[0]]
            if dims and -len(dims) <= axis < len(dims):
                bounds[node.input[1]] = min(bounds.get(node.input[1], dims[axis]), dims[axis])
    return bounds


@dataclass
class ModelInterface:
    """What the comparison needs of a model besides running it: feedable inputs, outputs, Gather index
    bounds, and (taken only when asked) its tensor bytes and why no float64 copy of it is made. The CLI
    takes it from the proto it has loaded, so the verification child never parses the file again (two
    parses of a 1.5 GB model cost ~10 s)."""

    inputs: list  # feedable onnx.ValueInfoProto
    outputs: list  # onnx.ValueInfoProto
    index_bounds: dict[str, int]
    tensor_bytes: int | None = None
    no_reference: str | None = None

    @classmethod
    def of(cls, model: onnx.ModelProto, *, census: bool = True) -> ModelInterface:
        """`census`: also walk every tensor for tensor_bytes and no_reference (needed of the first model)."""
        interface = cls([_copied(v) for v in feedable_inputs(model)], [_copied(v) for v in model.graph.output],
                        _index_bounds(model))
        if census:
            from bnlint.reference64 import NARROW_FLOATS, refusal_for

            total = narrow = 0
            for tensor, _kind in iter_all_tensors(model):
                size = tensor_nbytes(tensor) or 0
                total += size
                narrow += size if tensor.data_type in NARROW_FLOATS else 0
            interface.tensor_bytes, interface.no_reference = total, refusal_for(narrow, bool(model.functions))
        return interface

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]


def _copied(value: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """A detached copy (the CLI rewrites the proto it came from while verification runs)."""
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(value)
    return copy


def make_input_sets(model: onnx.ModelProto | ModelInterface, options: VerifyOptions,
                    label: str) -> list[dict[str, np.ndarray]]:
    """Seeded random inputs (normal floats, integers in a valid range, random booleans), then --inputs."""
    if isinstance(model, ModelInterface):
        values, bounds = model.inputs, model.index_bounds
    else:
        values, bounds = feedable_inputs(model), _index_bounds(model)
    sets = []
    for run in range(options.runs):
        rng = np.random.default_rng(options.seed + run)
        feed = {}
        for value in values:
            dtype = _np_type(value, label)
            shape = _input_shape(value, options.dims)
            if dtype.kind == "f" or dtype.name == "bfloat16":
                feed[value.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind == "b":
                feed[value.name] = rng.integers(0, 2, shape).astype(bool)
            else:
                high = bounds.get(value.name, DEFAULT_INT_HIGH)
                feed[value.name] = rng.integers(0, max(high, 1), shape).astype(dtype)
        sets.append(feed)
    if options.inputs:
        sets.append(_load_npz(options.inputs, values, label))
    return sets


def _load_npz(path: str, values, label: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise VerifyError(f"{path}: cannot read inputs: {exc}") from None
    feed = {}
    for value in values:
        if value.name not in arrays:
            raise VerifyError(f"{path}: no array named '{value.name}' (the model's inputs: "
                              f"{', '.join(v.name for v in values)})")
        dtype = _np_type(value, label)
        array = arrays[value.name]
        if array.dtype != dtype:
            if array.dtype.kind != dtype.kind and not (array.dtype.kind in "iu" and dtype.kind in "iu"):
                raise VerifyError(f"{path}: '{value.name}' is {array.dtype}, the model expects {dtype}")
            array = array.astype(dtype)
        feed[value.name] = array
    return feed


def _widen_feed(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: (v.astype(np.float64) if v.dtype.kind == "f" or v.dtype.name == "bfloat16" else v)
            for k, v in feed.items()}


# -- comparison ----------------------------------------------------------------------------------
def _dtype_name(array: np.ndarray) -> str:
    return array.dtype.name


def _is_float(array: np.ndarray) -> bool:
    return array.dtype.kind == "f" or array.dtype.name == "bfloat16"


def _channel_view(array: np.ndarray) -> np.ndarray:
    """The array as [channels, everything else] (axis 1 is the channel; rank < 2 is one channel)."""
    wide = np.asarray(array, dtype=np.float64)
    if wide.ndim < 2:
        return wide.reshape(1, -1)
    return np.moveaxis(wide, 1, 0).reshape(wide.shape[1], -1)


def _channel_scale(arrays: list[np.ndarray]) -> np.ndarray:
    """Largest finite |value| per channel over all input sets, floored at SCALE_FLOOR of the largest."""
    per_set = []
    for array in arrays:
        view = np.abs(_channel_view(array))
        view[~np.isfinite(view)] = 0.0
        per_set.append(view.max(axis=1) if view.size else np.zeros(view.shape[0]))
    scale = np.max(per_set, axis=0)
    largest = float(scale.max()) if scale.size else 0.0
    return np.maximum(scale, max(SCALE_FLOOR * largest, np.finfo(np.float64).tiny))


def _normalized_error(values: list[np.ndarray], reference: list[np.ndarray], scale: np.ndarray) -> float:
    worst = 0.0
    for value, ref in zip(values, reference):
        with np.errstate(invalid="ignore"):
            diff = np.abs(_channel_view(value) - _channel_view(ref))
        diff[~np.isfinite(diff)] = 0.0
        if diff.size:
            worst = max(worst, float((diff / scale[:, None]).max()))
    return worst


def _nonfinite_problem(first: np.ndarray, second: np.ndarray) -> str | None:
    for test, what in ((np.isnan, "NaN"), (np.isposinf, "+Inf"), (np.isneginf, "-Inf")):
        differ = np.count_nonzero(test(first) != test(second))
        if differ:
            return f"{what} pattern differs at {differ} position(s)"
    return None


def _basic_problem(first: np.ndarray, second: np.ndarray) -> str | None:
    if first.shape != second.shape:
        return f"shape {list(first.shape)} vs {list(second.shape)}"
    if first.dtype != second.dtype:
        return f"dtype {first.dtype} vs {second.dtype}"
    if not _is_float(first):
        differ = np.count_nonzero(first != second)
        return f"{differ} value(s) differ" if differ else None
    return _nonfinite_problem(np.asarray(first, np.float64), np.asarray(second, np.float64))


def _diff_stats(check: OutputCheck, first: np.ndarray, second: np.ndarray) -> None:
    a, b = np.asarray(first, np.float64), np.asarray(second, np.float64)
    finite = np.isfinite(a) & np.isfinite(b)
    if not finite.any():
        return
    diff = np.abs(a[finite] - b[finite])
    check.max_abs = max(check.max_abs, float(diff.max()))
    magnitude = np.abs(a[finite])
    nonzero = magnitude > 0
    if nonzero.any():
        check.max_rel = max(check.max_rel, float((diff[nonzero] / magnitude[nonzero]).max()))


class Comparator:
    """One tolerance rule applied to one output over all input sets. `nominal` maps output names to the
    type the model declares, when the arrays compared are wider (float64 copies of a bfloat16 model)."""

    def __init__(self, options: VerifyOptions, use_reference: bool, nominal: dict[str, str] | None = None):
        self.options = options
        self.use_reference = use_reference
        self.nominal = nominal or {}

    def check(self, name: str, firsts, seconds, refs=None) -> OutputCheck:
        check = OutputCheck(name, tuple(firsts[0].shape), self.nominal.get(name, _dtype_name(firsts[0])))
        for first, second in zip(firsts, seconds):
            problem = _basic_problem(first, second)
            if problem:
                check.problem = problem
                return check
            if _is_float(first):
                _diff_stats(check, first, second)
        if not _is_float(firsts[0]):
            return check
        if self.options.fixed:
            self._fixed(check, firsts, seconds, self.options.rtol or 0.0, self.options.atol or 0.0, scaled=False)
        elif self.use_reference and refs is not None:
            self._against_reference(check, firsts, seconds, refs)
        else:
            rtol, atol = FALLBACK_TOLERANCE.get(check.dtype, FALLBACK_TOLERANCE["float32"])
            self._fixed(check, firsts, seconds, rtol, atol, scaled=True)
        return check

    def _against_reference(self, check: OutputCheck, firsts, seconds, refs) -> None:
        scale = _channel_scale(refs)
        check.err_first = _normalized_error(firsts, refs, scale)
        check.err_second = _normalized_error(seconds, refs, scale)
        check.limit = K_FACTOR * check.err_first + FLOOR_ULPS * _UNIT_ROUNDOFF.get(check.dtype, 2.0**-24)
        if check.err_second > check.limit:
            check.problem = (f"error vs float64 {check.err_second:.3g} exceeds {K_FACTOR:g} x the original's "
                             f"{check.err_first:.3g} + {FLOOR_ULPS:g}u")

    def _fixed(self, check: OutputCheck, firsts, seconds, rtol: float, atol: float, scaled: bool) -> None:
        scale = _channel_scale(firsts) if scaled else None
        for first, second in zip(firsts, seconds):
            a, b = _channel_view(first), _channel_view(second)
            finite = np.isfinite(a) & np.isfinite(b)
            bound = (atol * scale[:, None] if scaled else atol) + rtol * np.abs(a)
            with np.errstate(invalid="ignore"):
                bad = finite & (np.abs(a - b) > bound)
            check.violations += int(np.count_nonzero(bad))
        check.limit = None
        if check.violations:
            what = f"atol={atol:g} x channel scale" if scaled else f"atol={atol:g}"
            check.problem = f"{check.violations} value(s) outside rtol={rtol:g}, {what}"


# -- isolation ------------------------------------------------------------------------------------
def model_footprint(model: onnx.ModelProto | ModelInterface) -> int:
    """Bytes of every tensor of the model, inline or external: what each session holds at least."""
    if isinstance(model, ModelInterface) and model.tensor_bytes is not None:
        return model.tensor_bytes
    return sum(tensor_nbytes(tensor) or 0 for tensor, _kind in iter_all_tensors(model))


def memory_cap(options: VerifyOptions, footprint: int) -> int | None:
    """The isolated run's address-space cap: --verify-memory, or MEMORY_FLOOR + MEMORY_FACTOR x footprint."""
    if options.memory == 0:
        return None
    if options.memory is not None:
        return options.memory
    return MEMORY_FLOOR + MEMORY_FACTOR * footprint


def compare_isolated(first_path: str, second_path: str, options: VerifyOptions,
                     checkpoints: Sequence[Checkpoint] = (), *, footprint: int | None = None,
                     label: str | None = None, cli_hints: bool = False) -> VerifyResult:
    """`compare_models` in one child process under `options.timeout` and `memory_cap`: a crash, a hang or
    a memory bomb in onnxruntime raises IsolationError (a BnlintError naming `label`) instead of taking
    bnlint down. `footprint`: the tensor bytes of both models, when the caller has them loaded (the child
    then reads the models itself); `cli_hints`: the errors name the command-line options that raise the
    limits."""
    first = second = first_model = None
    if footprint is None:
        with model_size_limit(options.max_model_size):
            first_model = load_onnx(first_path)
            first = ModelInterface.of(first_model)
            second = ModelInterface.of(load_onnx(second_path))
        footprint = first.tensor_bytes + second.tensor_bytes
    pending = start_verification(first_path, options, first, model=first_model, footprint=footprint,
                                 label=label or f"{second_path}: verification against {first_path}",
                                 cli_hints=cli_hints)
    return pending.finish(second_path, second, checkpoints)


class PendingVerification:
    """A verification child started before the second model exists (start_verification). While the
    caller rewrites, it imports onnxruntime, opens and runs the first model's session and starts the
    float64 reference; finish() hands it the second model and returns the verdict."""

    def __init__(self, isolated, channel):
        self.isolated, self.channel = isolated, channel

    def finish(self, second_path: str, second: ModelInterface | None = None,
               checkpoints: Sequence[Checkpoint] = ()) -> VerifyResult:
        """The comparison with `second_path` (`second`: its interface, when the caller has it loaded);
        raises what compare_isolated raises. The request is sent once the child says it is ready, so a
        child stuck in the first half cannot block this process past the timeout."""
        import time

        started = time.monotonic()
        try:
            if self.channel.poll(self.isolated.timeout):
                self.channel.recv()  # "ready"
                self.channel.send((str(second_path), second, tuple(checkpoints)))
        except (EOFError, OSError):  # the child already ended: result() says how
            pass
        finally:
            self.channel.close()
        return self.isolated.result(spent=time.monotonic() - started)

    def cancel(self) -> None:
        """Stop the child (nothing to verify, or an error); harmless after finish()."""
        self.channel.close()
        self.isolated.cancel()


def start_verification(first_path: str, options: VerifyOptions, first: ModelInterface | None = None, *,
                       model: onnx.ModelProto | None = None, footprint: int, label: str,
                       cli_hints: bool = False) -> PendingVerification:
    """Start the isolated comparison of `first_path` with a model to be given later (finish), under
    `options.timeout` (counted from finish) and memory_cap(options, footprint). `first`: the first
    model's interface (None: the child loads the file); `model`: its loaded proto, handed to a forked
    child for free (its float64 reference then needs no second parse), never copied into a fresh one."""
    import multiprocessing

    from bnlint.isolation import forks, start_isolated

    mine, theirs = multiprocessing.Pipe()
    huge = footprint >= HUGE_PAGES_FROM
    shared = model if model is not None and forks(huge) else None
    try:
        isolated = start_isolated(_staged_compare_task, str(first_path), first, options, theirs, shared,
                                  timeout=options.timeout, memory_bytes=memory_cap(options, footprint),
                                  label=label, die_with_parent=True, huge_pages=huge,
                                  **(LIMIT_HINTS if cli_hints else {}))
    except BaseException:
        mine.close()
        raise
    finally:
        theirs.close()
    return PendingVerification(isolated, mine)


def _staged_compare_task(first_path: str, first, options: VerifyOptions, channel, model=None):
    """start_verification's child: the first model's half now, then "ready", then the rest once the
    second model's path arrives (a closed pipe: nothing to compare)."""
    with model_size_limit(options.max_model_size):  # a fresh child does not inherit the parent's cap
        prepared = _Prepared(first_path, first, options, model)
        try:
            channel.send("ready")
            request = channel.recv()
        except (EOFError, OSError):
            request = None
        finally:
            channel.close()
        if request is None:
            prepared.close()
            return None
        second_path, second, checkpoints = request
        return compare_models(first_path, second_path, options, checkpoints, prepared=prepared, second=second)


def run_model(path: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Every output of the model at `path` on `feed` (a task for run_isolated); VerifyError on failure."""
    try:
        return session(path).run(None, feed)
    except Exception as exc:  # onnxruntime raises its own types
        raise VerifyError(f"{path}: onnxruntime failed to run the model: {_first_line(exc)}") from None


# -- the comparison of two models -------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A value of the first model and the value of the second that must equal it, with a label."""

    label: str
    first: str
    second: str


class _Prepared:
    """The first model's half of a comparison, which needs nothing of the second: its input sets, its
    session and outputs, and the float64 reference helper (started first, while forking is safe). Errors
    wait in `error` / `native` so the interface check still speaks first."""

    def __init__(self, path: str, first: ModelInterface | None, options: VerifyOptions,
                 model: onnx.ModelProto | None = None):
        self.path = self.label = str(path)
        self._model = model
        if first is None:
            first = ModelInterface.of(self.model())
        self.first, self.names = first, first.output_names
        self.no_reference = None if options.fixed else first.no_reference
        self.error: VerifyError | None = None
        self.native: VerifyError | None = None  # onnxruntime cannot load the first model as it is
        self.helper = self.session = None
        self.feeds: list[dict] = []
        self.outputs: list[dict] = []
        try:
            self.feeds = make_input_sets(first, options, self.label)
        except VerifyError as exc:
            self.error = exc
            return
        if not options.fixed and self.no_reference is None:
            self.helper = _start_reference(model, self.path, self.feeds, self.names)
        try:
            self.session = _open(self.path, self.label)
        except VerifyError as exc:
            self.native = exc
            return
        try:
            self.outputs = [_run(self.session, feed, self.label, self.names) for feed in self.feeds]
        except VerifyError as exc:
            self.error = exc
        # Its outputs are kept; the session itself only serves a near miss's extra input sets. Freed now,
        # its memory serves the second session (a fresh 1.5 GB costs ~3 s of page faults, reused ~0.6 s).
        self.session = _Reopened(self.path, self.label)

    def model(self) -> onnx.ModelProto:
        """The first model's proto, loaded on first use (float64 copies only)."""
        if self._model is None:
            self._model = load_onnx(self.path)
        return self._model

    def close(self) -> None:
        if self.helper is not None:
            self.helper.cancel()
            self.helper = None


class _Reopened:
    """A session opened again on first use."""

    def __init__(self, path: str, label: str):
        self.path, self.label, self.session = path, label, None

    def _opened(self):
        if self.session is None:
            self.session = _open(self.path, self.label)
        return self.session

    def run(self, names, feed):
        return self._opened().run(names, feed)

    def get_outputs(self):
        return self._opened().get_outputs()


def compare_models(first_path: str, second_path: str, options: VerifyOptions,
                   checkpoints: Sequence[Checkpoint] = (), *, prepared: _Prepared | None = None,
                   second: ModelInterface | None = None) -> VerifyResult:
    """Run both models on the same inputs and compare every output of the first. `prepared`: the first
    model's half, already done (start_verification); `second`: the second model's interface, when the
    caller has it."""
    first_label, second_label = str(first_path), str(second_path)
    if prepared is None:  # in this process, from the files
        first_model = load_onnx(first_path)
        first, second = ModelInterface.of(first_model), ModelInterface.of(load_onnx(second_path), census=False)
        _check_interfaces(first, second, first_label, second_label)  # before any session, as always
        prepared = _Prepared(first_label, first, options, first_model)
    try:
        if second is None:
            second = ModelInterface.of(load_onnx(second_path), census=False)
        _check_interfaces(prepared.first, second, first_label, second_label)
        if prepared.error is not None:
            raise prepared.error
        return _compare_prepared(prepared, second_label, options, checkpoints)
    finally:
        prepared.close()


def _compare_prepared(prepared: _Prepared, second_label: str, options: VerifyOptions,
                      checkpoints: Sequence[Checkpoint]) -> VerifyResult:
    first_label, feeds, names = prepared.label, prepared.feeds, prepared.names
    notes: list[str] = []
    runs = _second_runs(prepared, second_label, notes)
    if runs.nominal is None and not options.fixed:
        if prepared.no_reference is not None:
            notes.append(f"no float64 reference: {prepared.no_reference}")
        else:
            agreement, worst = agreement_checks(runs.names, runs.firsts, runs.seconds)
            if worst <= 1.0:
                return VerifyResult(True, agreement, AGREEMENT_MODE, notes, len(feeds))
            if math.isfinite(worst):
                notes.append(f"the outputs differ from the original's by {worst:.3g} x what is accepted without "
                             f"a float64 reference ({AGREEMENT_ULPS:g}u of a channel's largest |value|)")
            _attach_reference(runs, prepared, notes)
    prepared.close()
    comparator, checks = runs.compare(options)
    if not all(c.ok for c in checks) and runs.reference is not None and _near_miss(checks):
        # Rounding errors of two equivalent models are random draws; with few values per channel the
        # original can be lucky. A real divergence stays; a draw regresses once more inputs are pooled.
        extra = make_input_sets(prepared.first, replace(options, seed=options.seed + options.runs,
                                                        runs=NEAR_MISS_RUNS, inputs=None), first_label)
        runs.collect(extra)
        feeds = feeds + extra
        comparator, checks = runs.compare(options)
        notes.append(f"near miss: re-checked on {len(extra)} more random input sets")
    ok = all(c.ok for c in checks)
    result = VerifyResult(ok, checks, _mode_text(options, runs.reference is not None), notes, len(feeds))
    if not ok:
        result.failing_set = _first_failing_set(checks, runs.firsts, runs.seconds, comparator, names, runs.refs)
        if checkpoints:
            result.divergence = locate_divergence(first_label, second_label, checkpoints,
                                                  feeds[result.failing_set or 0], comparator,
                                                  runs.reference is not None)
    return result


def _second_runs(prepared: _Prepared, second_label: str, notes: list[str]) -> _Runs:
    """Both models' outputs on the prepared input sets: the second model's session beside the first's, or
    float64 copies of both when onnxruntime cannot run either as it is (bfloat16)."""
    labels = (prepared.label, second_label)
    native = prepared.native
    if native is None:
        try:
            second_session = _open(second_label, second_label)
        except VerifyError as exc:
            native = exc
        else:
            runs = _Runs((prepared.session, second_session), None, prepared.names, labels, notes)
            runs.continue_with(prepared.feeds, prepared.outputs)
            return runs
    sessions = _widened_sessions(prepared.model(), load_onnx(second_label), prepared.label, second_label, native)
    nominal = {o.name: _declared_dtype(o) for o in prepared.first.outputs}
    notes.append(f"onnxruntime cannot run the models as they are ({native}); compared float64 copies, "
                 "which hold the same weights exactly, with the fixed tolerance of the declared type")
    runs = _Runs(sessions, None, prepared.names, labels, notes, nominal)
    runs.collect(prepared.feeds)
    return runs


def _declared_dtype(value: onnx.ValueInfoProto) -> str:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)).name
    except (KeyError, ValueError, TypeError):
        return "float32"


def _widened_sessions(first_model, second_model, first_path: str, second_path: str, native: VerifyError):
    """Sessions over float64 copies of both models, for types onnxruntime's CPU provider cannot run
    (bfloat16); widening is exact, so the stored weights are compared as they are."""
    from bnlint.reference64 import NoReference, float64_copy

    sessions = []
    for model, path in ((first_model, first_path), (second_model, second_path)):
        try:
            sessions.append(_reference_session_for(float64_copy(model, path)))
        except NoReference:
            raise native from None
        if sessions[-1] is None:
            raise native
    return tuple(sessions)


def _start_reference(model: onnx.ModelProto | None, path: str, feeds, names):
    """The float64 reference's outputs on `feeds`, computed in a forked helper process while this one
    creates and runs the two sessions (onnxruntime holds the GIL while it builds a session, so a thread
    would not overlap). Only when forking is safe (onnxruntime not loaded yet, as in the isolated
    verification child); else None and the reference is built here, if needed. Under a memory cap, each
    of the two processes gets half of what remains (share_memory_cap); the helper dies with this process
    and is cancelled when the models agree without it. `model` None: the helper loads `path` itself."""
    from bnlint.isolation import fork_is_safe, share_memory_cap, start_isolated

    if not fork_is_safe():
        return None
    return start_isolated(_reference_outputs_task, model, path, feeds, names, timeout=None,
                          memory_bytes=share_memory_cap(), label=f"{path}: float64 reference", die_with_parent=True)


def _reference_outputs_task(model: onnx.ModelProto | None, path: str, feeds, names):
    """(the reference's outputs per feed, or None when it cannot run; the notes that say why)."""
    notes: list[str] = []
    reference = _reference_session(load_onnx(path) if model is None else model, path, notes, checked=True)
    outputs = []
    for feed in feeds if reference is not None else ():
        result = _run_reference(reference, feed, names, notes)
        if result is None:
            return None, notes
        outputs.append(result)
    return (outputs if reference is not None else None), notes


def _attach_reference(runs: _Runs, prepared: _Prepared, notes: list[str]) -> None:
    """Give `runs` the float64 reference: the helper's outputs (its session is rebuilt here only if more
    input sets need it), or a session built here."""
    helper, path = prepared.helper, prepared.path
    if helper is None:
        runs.attach_reference(_reference_session(prepared.model(), path, notes, checked=True))
        return
    prepared.helper = None
    outputs, helper_notes = helper.result()
    notes.extend(helper_notes)
    if outputs is None:
        runs.attach_reference(None)
        return
    runs.attach_outputs(_RebuiltReference(lambda: _reference_session(prepared.model(), path, [], checked=True)),
                        outputs)


class _RebuiltReference:
    """A float64 reference whose outputs so far came from the helper process; `run` builds its session
    here the first time more input sets need it (a near miss)."""

    def __init__(self, build):
        self.build, self.session = build, None

    def run(self, names, feed):
        if self.session is None:
            self.session = self.build()
            if self.session is None:
                raise RuntimeError("the float64 copy could not be built again")
        return self.session.run(names, feed)


AGREEMENT_ULPS = FLOOR_ULPS  # the float64 reference is skipped when the models agree this closely (see below)
AGREEMENT_MODE = (f"float64 reference not needed: |new - original| <= {AGREEMENT_ULPS:g}u x each channel's largest "
                  f"|value|, which implies err(new) <= {K_FACTOR:g} x err(original) + {FLOOR_ULPS:g}u")


def agreement_limit(dtype: str) -> float:
    """The largest channel-normalized |new - original| accepted without a float64 reference.

    With d that distance, the triangle inequality gives err(new) <= err(original) + d x (1 + err(original))
    (the channel scales of the original and of the reference differ by at most err(original)), so
    d <= FLOOR_ULPS x u implies the reference rule err(new) <= K_FACTOR x err(original) + FLOOR_ULPS x u
    whatever err(original) is; capped at the fallback atol, it also implies the fixed fallback rule. A
    rewrite the reference would reject is therefore never accepted here; anything farther apart gets the
    reference."""
    atol = FALLBACK_TOLERANCE.get(dtype, FALLBACK_TOLERANCE["float32"])[1]
    return min(AGREEMENT_ULPS * _UNIT_ROUNDOFF.get(dtype, 2.0**-24), atol)


def agreement_checks(names, firsts, seconds) -> tuple[list[OutputCheck], float]:
    """Each output of the second model compared with the first's, without a reference: the checks and
    the worst distance as a multiple of agreement_limit (<= 1: the rewrite passes; inf: a shape, dtype,
    NaN pattern or integer difference, which only the full comparison reports)."""
    checks, worst = [], 0.0
    for name in names:
        a, b = [r[name] for r in firsts], [r[name] for r in seconds]
        check = OutputCheck(name, tuple(a[0].shape), _dtype_name(a[0]))
        checks.append(check)
        if any(_basic_problem(x, y) for x, y in zip(a, b)):
            return checks, math.inf
        if not _is_float(a[0]):
            continue
        for x, y in zip(a, b):
            _diff_stats(check, x, y)
        check.err_second = _normalized_error(b, a, _channel_scale(a))
        check.limit = agreement_limit(check.dtype)
        worst = max(worst, check.err_second / check.limit if check.limit > 0 else math.inf)
    return checks, worst


NEAR_MISS_RUNS = 12
NEAR_MISS_FACTOR = 16.0


def _near_miss(checks: list[OutputCheck]) -> bool:
    """Every failure is the reference rule missed by less than NEAR_MISS_FACTOR (not a shape, NaN or
    integer difference, nor an error orders of magnitude too large)."""
    failing = [c for c in checks if not c.ok]
    return all(c.err_second is not None and c.limit is not None and c.err_second <= NEAR_MISS_FACTOR * c.limit
               for c in failing)


class _Runs:
    """Outputs of both models (and the float64 reference, once attached) over the input sets run so far;
    each session is created once and runs every input set."""

    def __init__(self, sessions, reference, names, labels, notes, nominal=None):
        self.sessions, self.reference, self.names, self.labels, self.notes = sessions, reference, names, labels, notes
        self.nominal = nominal
        self.feeds, self.firsts, self.seconds, self.refs = [], [], [], []

    def collect(self, feeds) -> None:
        for feed in feeds:
            if self.nominal is not None:
                feed = _widen_feed(feed)
            self.feeds.append(feed)
            self.firsts.append(_run(self.sessions[0], feed, self.labels[0], self.names))
            self.seconds.append(_run(self.sessions[1], feed, self.labels[1], self.names))
            if self.reference is not None:
                self._run_reference(feed)

    def continue_with(self, feeds, firsts) -> None:
        """collect() for input sets the first session has already run (`firsts`: its outputs)."""
        for feed, first in zip(feeds, firsts):
            self.feeds.append(feed)
            self.firsts.append(first)
            self.seconds.append(_run(self.sessions[1], feed, self.labels[1], self.names))
            if self.reference is not None:
                self._run_reference(feed)

    def attach_reference(self, reference) -> None:
        """Use `reference` (None: there is none) from now on, running it on the input sets already run."""
        self.reference, self.refs = reference, []
        for feed in self.feeds:
            if self.reference is None:
                break
            self._run_reference(feed)

    def attach_outputs(self, reference, outputs) -> None:
        """Use `reference` from now on, with its `outputs` on the input sets already run."""
        self.reference, self.refs = reference, list(outputs)

    def _run_reference(self, feed) -> None:
        outputs = _run_reference(self.reference, feed, self.names, self.notes)
        if outputs is None:
            self.reference, self.refs = None, []
        else:
            self.refs.append(outputs)

    def compare(self, options: VerifyOptions):
        comparator = Comparator(options, use_reference=self.reference is not None, nominal=self.nominal)
        checks = self._checks(comparator)
        if self.reference is not None and _reference_broken(checks, self.notes):
            self.reference, self.refs = None, []
            comparator = Comparator(options, use_reference=False, nominal=self.nominal)
            checks = self._checks(comparator)
        return comparator, checks

    def _checks(self, comparator: Comparator) -> list[OutputCheck]:
        return [comparator.check(name, [r[name] for r in self.firsts], [r[name] for r in self.seconds],
                                 [r[name] for r in self.refs] if self.refs else None) for name in self.names]


def _mode_text(options: VerifyOptions, reference: bool) -> str:
    if options.fixed:
        return f"fixed tolerance: |new - original| <= {options.atol or 0:g} + {options.rtol or 0:g} x |original|"
    if reference:
        return (f"float64 reference: err(new) <= {K_FACTOR:g} x err(original) + {FLOOR_ULPS:g}u, errors relative "
                "to each channel's largest |value|")
    return ("fixed tolerance (no float64 reference): |new - original| <= rtol x |original| + atol x channel scale "
            "(rtol/atol: float32 1e-4/1e-5, float16 1e-2/1e-3, bfloat16 5e-2/1e-2, float64 1e-9/1e-10)")


def _describe_type(value: onnx.ValueInfoProto) -> str:
    tensor_type = value.type.tensor_type
    elem = onnx.TensorProto.DataType.Name(tensor_type.elem_type).lower() if tensor_type.elem_type else "?"
    if not tensor_type.HasField("shape"):
        return elem
    dims = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor_type.shape.dim]
    return f"{elem}[{','.join(dims)}]"


def _compatible(a: onnx.ValueInfoProto, b: onnx.ValueInfoProto) -> bool:
    ta, tb = a.type.tensor_type, b.type.tensor_type
    if ta.elem_type != tb.elem_type:
        return False
    if not (ta.HasField("shape") and tb.HasField("shape")):
        return True
    if len(ta.shape.dim) != len(tb.shape.dim):
        return False
    return all(not (x.HasField("dim_value") and y.HasField("dim_value")) or x.dim_value == y.dim_value
               for x, y in zip(ta.shape.dim, tb.shape.dim))


def _check_interfaces(first: ModelInterface, second: ModelInterface, first_label: str, second_label: str) -> None:
    a = {v.name: v for v in first.inputs}
    b = {v.name: v for v in second.inputs}
    if set(a) != set(b):
        raise VerifyError(f"{second_label}: inputs differ from {first_label}'s "
                          f"({', '.join(sorted(a))} vs {', '.join(sorted(b))})")
    for name in a:
        if not _compatible(a[name], b[name]):
            raise VerifyError(f"{second_label}: inputs differ from {first_label}'s: '{name}' is "
                              f"{_describe_type(a[name])} vs {_describe_type(b[name])}")
    outputs_a = first.output_names
    missing = [name for name in outputs_a if name not in set(second.output_names)]
    if missing:
        raise VerifyError(f"{second_label}: output(s) {', '.join(missing)} of {first_label} are missing")


def _reference_session(model: onnx.ModelProto, path: str, notes: list[str], checked: bool = False):
    from bnlint.reference64 import NoReference, float64_copy, wrap_in_float32

    try:
        copy = float64_copy(model, path, checked=checked)
    except NoReference as exc:
        notes.append(f"no float64 reference: {exc}")
        return None
    wrapped = []
    for _attempt in range(16):
        try:
            sess = _copy_session(copy)
            if wrapped:
                notes.append(f"float64 reference computes {', '.join(wrapped)} in float32 (no double kernel)")
            return sess
        except Exception as exc:
            op = _missing_kernel(str(exc))
            if op is None or op in wrapped or not wrap_in_float32(copy, op):
                notes.append(f"no float64 reference: onnxruntime cannot run the float64 copy ({_first_line(exc)})")
                return None
            wrapped.append(op)
    return None


def _copy_session(copy: onnx.ModelProto):
    """A session over the float64 copy: one, or one per segment of a deep copy (reference64.segments), whose
    setup costs grow faster than linearly with nodes (a 20000-block copy: ~70 s in one, a few in pieces)."""
    from bnlint.reference64 import segments

    pieces = segments(copy)
    return session(copy) if pieces is None else _SegmentedSession([session(piece) for piece in pieces])


class _SegmentedSession:
    """Runs the segments of a model in order, handing each the values it reads (bit-identical to one
    session: the same kernels on the same values)."""

    def __init__(self, sessions):
        self.sessions = sessions
        self.plans = [([i.name for i in s.get_inputs()], [o.name for o in s.get_outputs()]) for s in sessions]

    def run(self, names, feed):
        values = dict(feed)
        for sess, (inputs, outputs) in zip(self.sessions, self.plans):
            values.update(zip(outputs, sess.run(outputs, {name: values[name] for name in inputs})))
        return [values[name] for name in names]


def _missing_kernel(message: str) -> str | None:
    marker = "Could not find an implementation for "
    if marker not in message:
        return None
    return message.split(marker, 1)[1].split("(", 1)[0].strip()


def _run_reference(reference, feed, names, notes) -> dict[str, np.ndarray] | None:
    try:
        return dict(zip(names, reference.run(names, _widen_feed(feed))))
    except Exception as exc:
        notes.append(f"no float64 reference: the float64 copy failed to run ({_first_line(exc)})")
        return None


def _reference_broken(checks: list[OutputCheck], notes: list[str]) -> bool:
    """A reference the original itself disagrees with beyond float rounding is a bnlint bug or an op the
    copy cannot reproduce; it must not loosen the tolerance, so the fixed tolerance is used instead."""
    for check in checks:
        if check.err_first is None:
            continue
        sanity = max(1e-2, 64 * _UNIT_ROUNDOFF.get(check.dtype, 2.0**-24))
        if check.err_first > sanity:
            notes.append(f"float64 reference disagrees with the original on '{check.name}' "
                         f"({check.err_first:.3g}); using the fixed tolerance instead")
            return True
    return False


def _first_failing_set(checks, firsts, seconds, comparator: Comparator, names, refs) -> int:
    failing = [c.name for c in checks if not c.ok]
    for k in range(len(firsts)):
        for name in failing:
            one = comparator.check(name, [firsts[k][name]], [seconds[k][name]], [refs[k][name]] if refs else None)
            if not one.ok:
                return k
    return 0


# -- finding the first rewrite that diverges ------------------------------------------------------
def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in names:
        if name not in present:
            copy.graph.output.add().name = name
            present.add(name)
    return copy


def locate_divergence(first_path: str, second_path: str, checkpoints: Sequence[Checkpoint], feed: dict,
                      comparator: Comparator, use_reference: bool) -> str | None:
    """The label of the first checkpoint (in the first model's order) whose values differ, comparing the
    two models' intermediate values with the same rule as their outputs."""
    first_model, second_model = load_onnx(first_path), load_onnx(second_path)
    order_a = {name: k for k, node in enumerate(first_model.graph.node) for name in node.output}
    produced_b = {name for node in second_model.graph.node for name in node.output}
    usable = sorted((c for c in checkpoints if c.first in order_a and c.second in produced_b),
                    key=lambda c: order_a[c.first])
    if not usable:
        return None
    try:
        first = _with_outputs(first_model, [c.first for c in usable])
        second = _with_outputs(second_model, [c.second for c in usable])
        a = _run(session(first, str(Path(first_path).parent)), feed, first_path, [c.first for c in usable])
        b = _run(session(second, str(Path(second_path).parent)), feed, second_path, [c.second for c in usable])
        ref = None
        if use_reference:
            from bnlint.reference64 import float64_copy

            ref_session = _reference_session_for(float64_copy(first, first_path))
            if ref_session is not None:
                ref = _run_reference(ref_session, feed, [c.first for c in usable], [])
    except Exception:  # localization is best effort: the verdict itself stands without it
        return None
    for checkpoint in usable:
        refs = [ref[checkpoint.first]] if ref is not None else None
        one = comparator.check(checkpoint.first, [a[checkpoint.first]], [b[checkpoint.second]], refs)
        if not one.ok:
            return checkpoint.label
    return None


def _reference_session_for(copy: onnx.ModelProto):
    from bnlint.reference64 import wrap_in_float32

    for _attempt in range(16):
        try:
            return session(copy)
        except Exception as exc:
            op = _missing_kernel(str(exc))
            if op is None or not wrap_in_float32(copy, op):
                return None
    return None


# -- text ----------------------------------------------------------------------------------------------
def render_table(result: VerifyResult) -> str:
    """The verification table: one row per output."""
    def number(value):
        return "-" if value is None else f"{value:.3g}"

    rows = [("output", "shape", "dtype", "max abs", "max rel", "err orig", "err new", "limit", "result")]
    for check in result.outputs:
        rows.append((printable(check.name), "x".join(str(d) for d in check.shape) or "scalar", check.dtype,
                     number(check.max_abs), number(check.max_rel), number(check.err_first),
                     number(check.err_second), number(check.limit), "ok" if check.ok else "FAIL"))
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    lines = ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    for check in result.outputs:
        if check.problem:
            lines.append(printable(f"  {check.name}: {check.problem}"))
    return "\n".join(lines)


def describe(result: VerifyResult) -> str:
    head = "equivalent" if result.ok else "NOT equivalent"
    lines = [f"verification: {head} on {result.input_sets} input set(s); {result.mode}", render_table(result)]
    lines.extend(printable(f"  note: {note}") for note in result.notes)
    if result.divergence:
        lines.append(printable(f"  first rewrite whose local output diverges: {result.divergence}"))
    return "\n".join(lines)


def parse_dims(values: Sequence[str]) -> dict[str, int]:
    """--dim NAME=VALUE options as a dict."""
    dims = {}
    for value in values:
        name, sep, number = value.partition("=")
        if not sep or not name.strip() or not number.strip().isdigit() or int(number) <= 0:
            raise VerifyError(f"--dim {value!r}: expected NAME=POSITIVE_INTEGER")
        dims[name.strip()] = int(number)
    return dims
