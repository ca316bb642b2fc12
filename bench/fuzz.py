"""Fuzz `bnlint check` (and `bnlint fix`) with mutated models: every run must end with exit 0, 1 or 2.

    python bench/fuzz.py                      # 10,000 inputs, seed 0
    python bench/fuzz.py --count 50000 --seed 7 --fix-every 25 --subprocess-every 500

Inputs are valid seed models (fixtures/**/*.onnx, the text fixtures, and a few built here: subgraphs,
functions, external data, every BN/Dropout opset variant) mutated at the byte level (bit flips, byte
overwrites, truncation, chunk deletion/duplication, splices) or at the protobuf level (op types, domains,
attribute types and values, tensor types, shapes and data, opset and IR versions, external data
locations, node order and wiring). `check` takes each report format in turn. Each runs in-process through
click's CliRunner; every Nth also runs as a
real subprocess to catch signals. A run fails when it raises, prints a traceback or an "internal error",
exits with another code, or writes a file when it exits 2 (`check` never writes; `fix` may write its
output only when it exits 0 or 1). Failing inputs are kept in --keep (default: a temp folder) for replay.

Prints the count, the outcome histogram and the failures; exits 1 when any run failed.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
DATA_NAME = "weights.bin"


@dataclass
class Seed:
    name: str
    data: bytes
    external: bytes | None = None  # contents of weights.bin beside the model


@dataclass
class Outcome:
    command: str
    exit_code: int | None
    category: str
    problem: str | None = None  # set when the run broke a rule


@dataclass
class Report:
    runs: int = 0
    histogram: collections.Counter = field(default_factory=collections.Counter)
    categories: collections.Counter = field(default_factory=collections.Counter)
    failures: list[tuple[str, str, Path]] = field(default_factory=list)


# -- seeds ------------------------------------------------------------------------------------------------
def _bn_params(prefix: str = "", channels: int = 2, rng=None):
    rng = rng or np.random.default_rng(0)
    return [numpy_helper.from_array((np.abs(rng.standard_normal(channels)) + 0.5).astype(np.float32), prefix + name)
            for name in ("s", "b", "m", "v")]


def _model(nodes, inits, inputs, outputs, opset=15, **kwargs) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", opset)], **kwargs)


def _x(shape=(1, 2, 4, 4), name="x"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def built_seeds() -> list[Seed]:
    """Small models that reach every part of bnlint: each rule, subgraphs, functions, external data."""
    rng = np.random.default_rng(0)
    seeds = []
    w = numpy_helper.from_array(rng.standard_normal((2, 2, 1, 1)).astype(np.float32), "w")
    conv_bn = _model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                      helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], name="bn"),
                      helper.make_node("Relu", ["n"], ["r"], name="relu"),
                      helper.make_node("MaxPool", ["r"], ["y"], name="pool", kernel_shape=[2, 2])],
                     [w, *_bn_params()], [_x()], [_x((1, 2, 3, 3), "y")])
    seeds.append(Seed("conv_bn_relu_pool", conv_bn.SerializeToString()))
    for opset in (6, 9, 12, 14):
        attrs = {"is_test": 1} if opset < 7 else {}
        extra = ["ratio"] if opset >= 12 else []
        inits = [*_bn_params()] + ([numpy_helper.from_array(np.array(0.5, np.float32), "ratio")] if extra else [])
        model = _model([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                        helper.make_node("Dropout", ["r", *extra], ["d"], name="drop", **attrs),
                        helper.make_node("BatchNormalization", ["d", "s", "b", "m", "v"], ["y"], name="bn",
                                         **({"is_test": 1} if opset < 7 else {}))],
                       inits, [_x()], [_x(name="y")], opset=opset)
        seeds.append(Seed(f"relu_dropout_bn_op{opset}", model.SerializeToString()))
    gemm = _model([helper.make_node("Gemm", ["x", "gw", "gb"], ["g"], name="gemm", transB=1),
                   helper.make_node("BatchNormalization", ["g", "s", "b", "m", "v"], ["n"], name="bn"),
                   helper.make_node("Clip", ["n", "lo", "hi"], ["y"], name="clip")],
                  [numpy_helper.from_array(rng.standard_normal((2, 3)).astype(np.float32), "gw"),
                   numpy_helper.from_array(np.zeros(2, np.float32), "gb"),
                   numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
                   numpy_helper.from_array(np.array(6.0, np.float32), "hi"), *_bn_params()],
                  [_x((1, 3), "x")], [_x((1, 2), "y")], opset=13)
    seeds.append(Seed("gemm_bn_clip", gemm.SerializeToString()))
    matmul = _model([helper.make_node("Constant", [], ["mw"], name="weights",
                                      value=numpy_helper.from_array(rng.standard_normal((3, 2)).astype(np.float32))),
                     helper.make_node("MatMul", ["x", "mw"], ["mm"], name="matmul"),
                     helper.make_node("Add", ["mm", "ab"], ["a"], name="add"),
                     helper.make_node("ConstantOfShape", ["shape"], ["ones"], name="fill",
                                      value=numpy_helper.from_array(np.ones(1, np.float32))),
                     helper.make_node("BatchNormalization", ["a", "ones", "b", "m", "v"], ["n1"], name="bn1"),
                     helper.make_node("BatchNormalization", ["n1", "s", "b", "m", "v"], ["y"], name="bn2",
                                      epsilon=1e-3)],
                    [numpy_helper.from_array(np.zeros(2, np.float32), "ab"),
                     numpy_helper.from_array(np.array([2], np.int64), "shape"), *_bn_params()],
                    [_x((1, 3), "x")], [_x((1, 2), "y")], opset=15)
    seeds.append(Seed("matmul_add_two_bn_constants", matmul.SerializeToString()))
    branch = helper.make_graph([helper.make_node("Relu", ["x"], ["br"]),
                                helper.make_node("BatchNormalization", ["br", "s", "b", "m", "v"], ["bo"])],
                               "branch", [], [_x(name="bo")])
    cond = _model([helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch, else_branch=branch)],
                  _bn_params(), [helper.make_tensor_value_info("cond", TensorProto.BOOL, []), _x()], [_x(name="y")])
    seeds.append(Seed("if_subgraphs", cond.SerializeToString()))
    function = helper.make_function("local", "ReluBN", ["fx", "fs", "fb", "fm", "fv"], ["fy"],
                                    [helper.make_node("Relu", ["fx"], ["fr"]),
                                     helper.make_node("BatchNormalization", ["fr", "fs", "fb", "fm", "fv"], ["fy"])],
                                    [helper.make_opsetid("", 15)])
    with_function = _model([helper.make_node("ReluBN", ["x", "s", "b", "m", "v"], ["y"], domain="local")],
                           _bn_params(), [_x()], [_x(name="y")], functions=[function])
    with_function.opset_import.append(helper.make_opsetid("local", 1))
    seeds.append(Seed("model_local_function", with_function.SerializeToString()))
    external = onnx.ModelProto()
    external.CopyFrom(conv_bn)
    blob = bytearray()
    for tensor in external.graph.initializer:
        raw = numpy_helper.to_array(tensor).tobytes()
        offset = len(blob)
        blob += raw
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", DATA_NAME), ("offset", str(offset)), ("length", str(len(raw)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    seeds.append(Seed("external_data", external.SerializeToString(), bytes(blob)))
    return seeds


def fixture_seeds() -> list[Seed]:
    seeds = []
    for path in sorted((REPO / "fixtures").rglob("*.onnx")):
        if path.stat().st_size < (1 << 20):
            seeds.append(Seed(str(path.relative_to(REPO)), path.read_bytes()))
    for path in sorted((REPO / "fixtures").rglob("*.onnxtxt")):
        try:
            model = onnx.parser.parse_model(path.read_text(encoding="utf-8"))
        except Exception:  # a text fixture the parser does not take is simply not a seed
            continue
        seeds.append(Seed(str(path.relative_to(REPO)), model.SerializeToString()))
    return seeds


def all_seeds() -> list[Seed]:
    return built_seeds() + fixture_seeds()


# -- byte-level mutations ---------------------------------------------------------------------------------
def flip_bits(data: bytearray, rng: random.Random) -> None:
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)


def set_bytes(data: bytearray, rng: random.Random) -> None:
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] = rng.choice((0x00, 0xFF, 0x7F, 0x80, 0x01, rng.randrange(256)))


def truncate(data: bytearray, rng: random.Random) -> None:
    del data[rng.randrange(1, len(data)):]


def delete_chunk(data: bytearray, rng: random.Random) -> None:
    start = rng.randrange(len(data))
    del data[start:start + rng.randint(1, 64)]


def duplicate_chunk(data: bytearray, rng: random.Random) -> None:
    start = rng.randrange(len(data))
    chunk = data[start:start + rng.randint(1, 64)]
    at = rng.randrange(len(data))
    data[at:at] = chunk


def insert_random(data: bytearray, rng: random.Random) -> None:
    at = rng.randrange(len(data))
    data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))


def big_varint(data: bytearray, rng: random.Random) -> None:
    at = rng.randrange(len(data))
    data[at:at + 1] = bytes([0xFF] * rng.randint(1, 9) + [rng.choice((0x01, 0x7F))])


BYTE_MUTATIONS = (flip_bits, flip_bits, set_bytes, truncate, delete_chunk, duplicate_chunk, insert_random, big_varint)


# -- protobuf-level mutations ------------------------------------------------------------------------------
OP_TYPES = ("BatchNormalization", "Dropout", "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "Relu",
            "Clip", "MaxPool", "Identity", "Reshape", "Constant", "ConstantOfShape", "If", "Loop", "Sigmoid",
            "Erf", "", "NotAnOp")
DOMAINS = ("", "ai.onnx", "com.microsoft", "local", "ai.onnx.ml", "unknown.domain")
INTERESTING_FLOATS = (0.0, -0.0, -1.0, 1e-45, 1e38, -1e38, float("nan"), float("inf"), float("-inf"))
INTERESTING_INTS = (0, 1, -1, 2, 6, 7, 12, 14, 99, 1 << 31, -(1 << 31), (1 << 62))
LOCATIONS = ("../escape.bin", "/etc/passwd", "", "w\x00.bin", DATA_NAME, "sub/../" + DATA_NAME, "C:\\x.bin",
             "nonexistent.bin", ".", "m.onnx")


def _graphs(model: onnx.ModelProto):
    stack = [model.graph, *model.functions]
    while stack:
        graph = stack.pop()
        yield graph
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    stack.append(attribute.g)
                stack.extend(attribute.graphs)


def _tensors(model: onnx.ModelProto):
    for graph in _graphs(model):
        yield from getattr(graph, "initializer", ())
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t


def _nodes(model):
    return [(graph, node) for graph in _graphs(model) for node in graph.node]


def _value_names(model) -> list[str]:
    names = set()
    for graph, node in _nodes(model):
        names.update(node.input)
        names.update(node.output)
    return sorted(n for n in names if n) or ["x"]


def mutate_proto(model: onnx.ModelProto, rng: random.Random) -> None:
    """One structural change; silently does nothing when the model lacks what it targets."""
    nodes = _nodes(model)
    tensors = list(_tensors(model))
    choice = rng.randrange(16)
    if choice == 0 and nodes:
        rng.choice(nodes)[1].op_type = rng.choice(OP_TYPES)
    elif choice == 1 and nodes:
        rng.choice(nodes)[1].domain = rng.choice(DOMAINS)
    elif choice == 2 and nodes:  # rewire an input: cycles, dangling names, self-loops
        _graph, node = rng.choice(nodes)
        names = _value_names(model) + ["", "missing"]
        if node.input:
            node.input[rng.randrange(len(node.input))] = rng.choice(names)
        else:
            node.input.append(rng.choice(names))
    elif choice == 3 and nodes:  # rename an output: duplicates
        _graph, node = rng.choice(nodes)
        if node.output:
            node.output[rng.randrange(len(node.output))] = rng.choice(_value_names(model) + [""])
    elif choice == 4 and nodes:  # attribute type or value
        _mutate_attribute(rng.choice(nodes)[1], rng)
    elif choice == 5 and tensors:
        tensor = rng.choice(tensors)
        tensor.data_type = rng.choice((0, 1, 2, 6, 7, 8, 9, 10, 11, 16, 17, 21, 22, 23, 25, 27, 40))
    elif choice == 6 and tensors:
        tensor = rng.choice(tensors)
        dims = list(tensor.dims) or [1]
        dims[rng.randrange(len(dims))] = rng.choice(INTERESTING_INTS)
        if rng.random() < 0.3:
            dims.append(rng.choice((0, 1, 3)))
        del tensor.dims[:]
        tensor.dims.extend(dims)
    elif choice == 7 and tensors:
        tensor = rng.choice(tensors)
        if tensor.HasField("raw_data"):
            raw = tensor.raw_data
            tensor.raw_data = raw[: rng.randrange(len(raw) + 1)] if rng.random() < 0.5 else raw + raw
        else:
            tensor.float_data.append(rng.choice(INTERESTING_FLOATS))
    elif choice == 8 and tensors:  # values: NaN, inf, negative variance, zero scale
        tensor = rng.choice(tensors)
        if tensor.data_type == TensorProto.FLOAT and tensor.HasField("raw_data") and len(tensor.raw_data) >= 4:
            values = np.frombuffer(tensor.raw_data, np.float32).copy()
            values[rng.randrange(values.size)] = rng.choice(INTERESTING_FLOATS)
            tensor.raw_data = values.tobytes()
    elif choice == 9:
        entry = rng.choice(list(model.opset_import)) if model.opset_import else model.opset_import.add()
        entry.version = rng.choice(INTERESTING_INTS + (1, 5, 7, 11, 13, 17, 22, 28))
        if rng.random() < 0.3:
            entry.domain = rng.choice(DOMAINS)
    elif choice == 10:
        model.ir_version = rng.choice((0, 1, 2, 3, 4, 7, 8, 10, 13, 99, -1))
    elif choice == 11 and tensors:  # external data pointing anywhere
        tensor = rng.choice(tensors)
        tensor.data_location = TensorProto.EXTERNAL
        keys = {"location": rng.choice(LOCATIONS), "offset": rng.choice(("0", "4", "-1", "0x1", "99999999", " 8")),
                "length": rng.choice(("", "4", "8", "16", "-4", "1e3"))}
        del tensor.external_data[:]
        for key, value in keys.items():
            if value or rng.random() < 0.5:
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
    elif choice == 12 and nodes:  # delete, duplicate or move a node
        graph, node = rng.choice(nodes)
        index = list(graph.node).index(node)
        action = rng.randrange(3)
        if action == 0:
            del graph.node[index]
        elif action == 1:
            graph.node.add().CopyFrom(node)
        else:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            del graph.node[index]
            graph.node.insert(rng.randrange(len(graph.node) + 1), copy)
    elif choice == 13 and nodes:  # graph attributes where none belong, or nested deeper
        _graph, node = rng.choice(nodes)
        sub = helper.make_graph([helper.make_node("Identity", [rng.choice(_value_names(model))], ["inner"])], "sub",
                                [], [helper.make_tensor_value_info("inner", TensorProto.FLOAT, None)])
        node.attribute.append(helper.make_attribute(rng.choice(("then_branch", "body", "else_branch", "odd")), sub))
    elif choice == 14 and model.graph.output:
        model.graph.output[rng.randrange(len(model.graph.output))].name = rng.choice(_value_names(model) + [""])
    elif choice == 15:
        model.graph.sparse_initializer.append(helper.make_sparse_tensor(
            numpy_helper.from_array(np.ones(2, np.float32), "sv"),
            numpy_helper.from_array(np.array([0, rng.choice((1, 5, -1))], np.int64), "si"), [rng.choice((2, 4, 0))]))


def _mutate_attribute(node: onnx.NodeProto, rng: random.Random) -> None:
    if not node.attribute or rng.random() < 0.3:
        name = rng.choice(("epsilon", "training_mode", "is_test", "spatial", "ratio", "min", "max", "beta",
                           "value", "value_float", "value_ints", "transB", "group", "kernel_shape", "momentum"))
        kind = rng.randrange(5)
        value = (rng.choice(INTERESTING_FLOATS), rng.choice(INTERESTING_INTS), "text",
                 [rng.choice(INTERESTING_INTS)], numpy_helper.from_array(np.ones(rng.choice((0, 1, 3)), np.float32)))[kind]
        node.attribute.append(helper.make_attribute(name, value))
        return
    attribute = rng.choice(list(node.attribute))
    action = rng.randrange(4)
    if action == 0:
        attribute.type = rng.choice(list(onnx.AttributeProto.AttributeType.values()))
    elif action == 1:
        attribute.f = rng.choice(INTERESTING_FLOATS)
    elif action == 2:
        attribute.i = rng.choice(INTERESTING_INTS)
    else:
        attribute.ref_attr_name = rng.choice(("", "outer"))


def mutate(seed: Seed, rng: random.Random) -> bytes:
    """One mutated input: protobuf-level changes (when the seed parses) and/or byte-level damage."""
    data = seed.data
    if rng.random() < 0.7:
        model = onnx.ModelProto()
        model.ParseFromString(data)
        for _ in range(rng.choice((1, 1, 2, 3))):
            mutate_proto(model, rng)
        try:
            data = model.SerializeToString()
        except Exception:  # protobuf refuses to serialize some combinations; fall back to bytes
            data = seed.data
    if rng.random() < 0.3 or data == seed.data:
        buffer = bytearray(data)
        for _ in range(rng.choice((1, 1, 2))):
            if buffer:
                rng.choice(BYTE_MUTATIONS)(buffer, rng)
        if rng.random() < 0.05:
            other = bytearray(seed.data)
            buffer = buffer[: rng.randrange(len(buffer) + 1)] + other[rng.randrange(len(other)):]
        data = bytes(buffer) or b"\0"
    return data


# -- running --------------------------------------------------------------------------------------------
def folder_state(folder: Path) -> dict[str, str]:
    state = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            state[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[str(path.relative_to(folder))] = "other"
    return state


_INTERNAL = re.compile(r"Traceback \(most recent call last\)|internal error|please report this", re.IGNORECASE)


def classify(stderr: str) -> str:
    """A short, stable category for a run's first error line (the message without names and numbers)."""
    line = next((l for l in stderr.splitlines() if l.startswith("bnlint: error:")), "")
    if not line:
        return ""
    text = line.split(": ", 3)[-1] if line.count(": ") >= 3 else line
    text = re.sub(r"'[^']*'|\"[^\"]*\"|\d+(\.\d+)?", "_", text)
    return " ".join(text.split()[:7])


def run_in_process(runner, cli, args: list[str]):
    result = runner.invoke(cli, args, catch_exceptions=True)
    exception = result.exception
    crashed = exception is not None and not isinstance(exception, SystemExit)
    detail = f"{type(exception).__name__}: {exception}" if crashed else ""
    return result.exit_code, result.stdout + result.stderr, result.stderr, detail


def run_subprocess(args: list[str], cwd: Path):
    try:
        done = subprocess.run([sys.executable, "-m", "bnlint", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, "", "", "timed out after 300 s"
    detail = f"killed by signal {-done.returncode}" if done.returncode < 0 else ""
    return done.returncode, done.stdout + done.stderr, done.stderr, detail


def judge(command: str, code, output: str, stderr: str, detail: str, before, after, allowed_outputs) -> Outcome:
    if detail:
        return Outcome(command, code, "crash", detail)
    if _INTERNAL.search(output):
        return Outcome(command, code, "internal", output.strip().splitlines()[-1][:300])
    if code not in (0, 1, 2):
        return Outcome(command, code, "bad-exit", f"exit code {code}")
    written = {k: v for k, v in after.items() if before.get(k) != v}
    if code == 2 and written:
        return Outcome(command, code, "written", f"exit 2 but wrote {sorted(written)}")
    unexpected = set(written) - set(allowed_outputs)
    if unexpected:
        return Outcome(command, code, "written", f"changed {sorted(unexpected)}")
    return Outcome(command, code, classify(stderr) or f"exit {code}")


def fuzz(count: int, seed: int = 0, *, fix_every: int = 0, subprocess_every: int = 0, keep: Path | None = None,
         progress: bool = False) -> Report:
    from click.testing import CliRunner

    from bnlint.cli import cli
    from bnlint.report import FORMATS

    rng = random.Random(seed)
    seeds = all_seeds()
    runner = CliRunner()
    report = Report()
    work = Path(tempfile.mkdtemp(prefix="bnlint-fuzz-"))
    keep = keep or work / "failures"
    (work / ".git").mkdir()  # the work folder is its own working tree
    cwd = os.getcwd()
    os.chdir(work)
    started = time.monotonic()
    try:
        for index in range(count):
            base = seeds[rng.randrange(len(seeds))]
            data = mutate(base, rng)
            case = work / "case"
            if case.exists():
                shutil.rmtree(case)
            case.mkdir()
            (case / "m.onnx").write_bytes(data)
            if base.external is not None:
                (case / DATA_NAME).write_bytes(base.external)
            # every report format in turn: a name the text formats show may be one a JSON encoder refuses
            fmt = FORMATS[index % len(FORMATS)]
            runs = [("check", ["check", "case/m.onnx", "-q", "--jobs", "1", "--format", fmt], ())]
            if fix_every and index % fix_every == 0:
                runs.append(("fix", ["fix", "case/m.onnx", "-o", "case/out.onnx", "-q"],
                             ("out.onnx", "out.onnx.data")))
            for command, args, allowed in runs:
                before = folder_state(case)
                use_subprocess = subprocess_every and index % subprocess_every == 0
                code, output, stderr, detail = (run_subprocess(args, work) if use_subprocess
                                                else run_in_process(runner, cli, args))
                after = folder_state(case)
                outcome = judge(command, code, output, stderr, detail, before, after,
                                [a for a in allowed if a in after or a in before])
                report.runs += 1
                report.histogram[f"{command} exit {outcome.exit_code}"] += 1
                report.categories[f"{command}: {outcome.category}"] += 1
                if outcome.problem:
                    keep.mkdir(parents=True, exist_ok=True)
                    kept = keep / f"{index:06d}-{command}.onnx"
                    kept.write_bytes(data)
                    report.failures.append((f"#{index} {command} from {base.name}", outcome.problem, kept))
                # a fix that exited 0/1 may leave its output; the next input starts clean either way
            if progress and (index + 1) % 1000 == 0:
                rate = (index + 1) / (time.monotonic() - started)
                print(f"  {index + 1} inputs, {len(report.failures)} failure(s), {rate:.0f}/s", file=sys.stderr)
    finally:
        os.chdir(cwd)
        shutil.rmtree(work / "case", ignore_errors=True)
        if not report.failures:
            shutil.rmtree(work, ignore_errors=True)
    return report


def print_report(report: Report, count: int, seconds: float) -> None:
    print(f"fuzzed {count} mutated inputs ({report.runs} runs) in {seconds:.1f} s")
    print("exit codes:")
    for key, value in sorted(report.histogram.items()):
        print(f"  {key:20} {value:7}")
    print("outcomes (most common first):")
    for key, value in report.categories.most_common(40):
        print(f"  {value:7}  {key}")
    if len(report.categories) > 40:
        print(f"  ... and {len(report.categories) - 40} rarer outcomes")
    print(f"failures: {len(report.failures)}")
    for where, problem, kept in report.failures[:50]:
        print(f"  {where}: {problem} (input kept at {kept})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="mutated inputs to run [10000]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fix-every", type=int, default=20, help="also run `bnlint fix` on every Nth input [20]")
    parser.add_argument("--subprocess-every", type=int, default=500,
                        help="run every Nth input as a real subprocess, to catch signals [500]")
    parser.add_argument("--keep", type=Path, default=None, help="folder for failing inputs")
    options = parser.parse_args(argv)
    started = time.monotonic()
    report = fuzz(options.count, options.seed, fix_every=options.fix_every,
                  subprocess_every=options.subprocess_every, keep=options.keep, progress=True)
    print_report(report, options.count, time.monotonic() - started)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
