"""Generate the corpus of malformed and hostile model files that bnlint must refuse cleanly.

    python tests/make_corpus.py OUT_FOLDER        # builds every case, prints one line per case

Each case is a model file (plus its external data, symlinks, FIFOs, ...) under OUT_FOLDER/tree, a folder
marked as a Git working tree, with OUT_FOLDER/outside holding what symlinks must not reach. Every case
names the substring its one-line error must contain; tests/test_hostile_inputs.py runs `bnlint check` on
each from inside OUT_FOLDER/tree and expects exit 2, that line, no traceback, and no file changed.
Cases under ACCEPTED are hostile-looking but valid: bnlint must read them (exit 0 or 1).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 15
LFS_POINTER = (b"version https://git-lfs.github.com/spec/v1\n"
               b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 1048576\n")


@dataclass(frozen=True)
class Case:
    """A target to run `bnlint check` on (relative to the tree, or absolute), the text its error line must
    contain, and extra CLI arguments."""

    target: str
    needle: str
    args: tuple[str, ...] = field(default=())


# -- models ---------------------------------------------------------------------------------------------
def conv_bn_relu(opset: int = OPSET) -> onnx.ModelProto:
    """x -> Conv -> BatchNormalization -> Relu -> y, all parameters as initializers (lints with BN004)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((2, 2, 1, 1)).astype(np.float32), "w")]
    inits += [numpy_helper.from_array(np.full(2, value, np.float32), name)
              for name, value in (("s", 1.5), ("b", 0.1), ("m", 0.2), ("v", 0.9))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], name="bn", epsilon=1e-5),
             helper.make_node("Relu", ["n"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", opset)])


def externalize(model: onnx.ModelProto, folder: Path, location: str = "w.bin", *, write: bool = True) -> None:
    """Move every initializer's bytes into one external file (written unless `write` is False)."""
    blob = bytearray()
    for tensor in model.graph.initializer:
        raw = numpy_helper.to_array(tensor).tobytes()
        offset = len(blob)
        blob += raw
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    if write:
        (folder / location).write_bytes(bytes(blob))


def set_external(tensor: onnx.TensorProto, key: str, value: str) -> None:
    for entry in tensor.external_data:
        if entry.key == key:
            entry.value = value
            return
    entry = tensor.external_data.add()
    entry.key, entry.value = key, value


def save(model: onnx.ModelProto, path: Path) -> str:
    """Serialize without onnx.save, which would rewrite external data itself."""
    path.write_bytes(model.SerializeToString())
    return path.name


def nested_if(depth: int) -> onnx.ModelProto:
    """A model whose graph nests `depth` If subgraphs, one inside the other (linear size)."""
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    leaf = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "leaf", [], [out])
    graph = leaf
    for level in range(depth):
        node = helper.make_node("If", ["cond"], ["y"], name=f"if{level}", then_branch=graph, else_branch=leaf)
        graph = helper.make_graph([node], f"level{level}", [], [out])
    graph.input.extend([helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])])
    return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", OPSET)])


def serialize_nested(depth: int) -> bytes:
    """Bytes of `nested_if(depth)`, built by hand past protobuf's own nesting limit (which refuses to
    build such a message, not only to parse it)."""
    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            byte = value & 0x7F
            value >>= 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)

    def field_bytes(number: int, payload: bytes) -> bytes:
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    leaf = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "leaf", [],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]).SerializeToString()
    graph = leaf
    for level in range(depth):
        then_attr = field_bytes(1, b"then_branch") + varint(20 << 3) + varint(5) + field_bytes(6, graph)
        node = field_bytes(1, b"cond") + field_bytes(2, b"y") + field_bytes(4, b"If") + field_bytes(5, then_attr)
        graph = field_bytes(1, node) + field_bytes(2, f"level{level}".encode())
    header = helper.make_model(helper.make_graph([], "unused", [], []),
                               opset_imports=[helper.make_opsetid("", OPSET)])
    header.ClearField("graph")
    return header.SerializeToString() + field_bytes(7, graph)


# -- cases ----------------------------------------------------------------------------------------------
CASES: dict[str, Callable[[Path, Path], Case]] = {}
ACCEPTED: dict[str, Callable[[Path, Path], Case]] = {}


def case(table: dict = CASES):
    def register(function):
        table[function.__name__] = function
        return function
    return register


@case()
def symlink_outside_tree(tree: Path, outside: Path) -> Case:
    target = outside / "elsewhere.onnx"
    save(conv_bn_relu(), target)
    (tree / "linked.onnx").symlink_to(target)
    return Case("linked.onnx", "outside the working tree")


@case()
def fifo(tree: Path, outside: Path) -> Case:
    os.mkfifo(tree / "pipe.onnx")
    return Case("pipe.onnx", "named pipe (FIFO)")


@case()
def character_device(tree: Path, outside: Path) -> Case:
    return Case(os.devnull, "character device")


@case()
def size_cap_option(tree: Path, outside: Path) -> Case:
    return Case(save(conv_bn_relu(), tree / "small.onnx"), "over the 100 bytes limit", ("--max-model-size", "100"))


@case()
def size_cap_default(tree: Path, outside: Path) -> Case:
    path = tree / "huge.onnx"
    with open(path, "wb") as handle:  # sparse: 17 GiB of size, no disk used
        handle.truncate(17 << 30)
    return Case(path.name, "over the 16 GiB limit")


@case()
def text_syntax_named_onnx(tree: Path, outside: Path) -> Case:
    (tree / "text.onnx").write_text('<ir_version: 8, opset_import: ["" : 15]>\ng (float[1] x) => (float[1] y)'
                                    " { y = Relu (x) }\n")
    return Case("text.onnx", "ONNX text syntax")


def _external_case(tree: Path, name: str, edit, needle: str, *, write: bool = True) -> Case:
    folder = tree / name
    folder.mkdir()
    model = conv_bn_relu()
    externalize(model, folder, write=write)
    edit(model, folder)
    return Case(f"{name}/{save(model, folder / 'model.onnx')}", needle)


@case()
def external_absolute(tree: Path, outside: Path) -> Case:
    return _external_case(tree, "ext_absolute", lambda m, f: set_external(m.graph.initializer[1], "location",
                          "/etc/passwd"), "is an absolute path")


@case()
def external_windows_drive(tree: Path, outside: Path) -> Case:
    return _external_case(tree, "ext_drive", lambda m, f: set_external(m.graph.initializer[1], "location",
                          "C:\\Windows\\win.ini"), "is an absolute path")


@case()
def external_dotdot(tree: Path, outside: Path) -> Case:
    (outside / "secret.bin").write_bytes(b"\0" * 64)
    return _external_case(tree, "ext_dotdot", lambda m, f: set_external(m.graph.initializer[1], "location",
                          "../../outside/secret.bin"), "escapes the model's folder")


@case()
def external_nul(tree: Path, outside: Path) -> Case:
    return _external_case(tree, "ext_nul", lambda m, f: set_external(m.graph.initializer[1], "location",
                          "w.bin\x00.png"), "contains NUL")


@case()
def external_symlinked_file(tree: Path, outside: Path) -> Case:
    def edit(model, folder):
        (outside / "w_real.bin").write_bytes((folder / "w.bin").read_bytes())
        (folder / "w.bin").unlink()
        (folder / "w.bin").symlink_to(outside / "w_real.bin")
    return _external_case(tree, "ext_symlink", edit, "goes through a symlink")


@case()
def external_symlinked_folder(tree: Path, outside: Path) -> Case:
    def edit(model, folder):
        (outside / "data").mkdir()
        (outside / "data" / "w.bin").write_bytes((folder / "w.bin").read_bytes())
        (folder / "data").symlink_to(outside / "data", target_is_directory=True)
        for tensor in model.graph.initializer:
            set_external(tensor, "location", "data/w.bin")
    return _external_case(tree, "ext_symlink_dir", edit, "goes through a symlink ('data')")


@case()
def external_hard_link(tree: Path, outside: Path) -> Case:
    def edit(model, folder):
        os.link(folder / "w.bin", outside / "w_alias.bin")
    return _external_case(tree, "ext_hardlink", edit, "has 2 hard links")


@case()
def external_past_end(tree: Path, outside: Path) -> Case:
    return _external_case(tree, "ext_past_end", lambda m, f: set_external(m.graph.initializer[4], "offset",
                          "4096"), "which has only")


@case()
def external_length_mismatch(tree: Path, outside: Path) -> Case:
    return _external_case(tree, "ext_length", lambda m, f: set_external(m.graph.initializer[1], "length", "4"),
                          "declares 4 bytes of external data")


@case()
def external_bad_offset(tree: Path, outside: Path) -> Case:
    return _external_case(tree, "ext_offset", lambda m, f: set_external(m.graph.initializer[1], "offset", "0x10"),
                          "not a non-negative decimal integer")


@case()
def external_missing(tree: Path, outside: Path) -> Case:
    return _external_case(tree, "ext_missing", lambda m, f: None, "not found next to the model", write=False)


@case()
def external_is_folder(tree: Path, outside: Path) -> Case:
    return _external_case(tree, "ext_folder", lambda m, f: (f / "w.bin").mkdir(), "is not a regular file",
                          write=False)


@case()
def external_is_fifo(tree: Path, outside: Path) -> Case:
    return _external_case(tree, "ext_fifo", lambda m, f: os.mkfifo(f / "w.bin"), "is not a regular file",
                          write=False)


@case()
def external_lfs_pointer(tree: Path, outside: Path) -> Case:
    return _external_case(tree, "ext_lfs", lambda m, f: (f / "w.bin").write_bytes(LFS_POINTER),
                          "this is a Git LFS pointer; run git lfs pull", write=False)


@case()
def external_string_tensor(tree: Path, outside: Path) -> Case:
    def edit(model, folder):
        model.graph.initializer[1].data_type = TensorProto.STRING
    return _external_case(tree, "ext_string", edit, "cannot be stored as external data")


@case()
def sparse_initializer_external(tree: Path, outside: Path) -> Case:
    folder = tree / "ext_sparse"
    folder.mkdir()
    model = conv_bn_relu()
    values = numpy_helper.from_array(np.ones(2, np.float32), "sp_values")
    indices = numpy_helper.from_array(np.array([0, 1], np.int64), "sp_indices")
    sparse = helper.make_sparse_tensor(values, indices, [4])
    sparse.values.name = "sp"
    sparse.values.ClearField("raw_data")
    sparse.values.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "sp.bin"), ("offset", "0"), ("length", "8")):
        entry = sparse.values.external_data.add()
        entry.key, entry.value = key, value
    (folder / "sp.bin").write_bytes(b"\0" * 8)
    model.graph.sparse_initializer.append(sparse)
    return Case(f"ext_sparse/{save(model, folder / 'model.onnx')}", "sparse tensor 'sp' stores its data externally")


@case()
def external_in_constant_node(tree: Path, outside: Path) -> Case:
    folder = tree / "ext_constant"
    folder.mkdir()
    model = conv_bn_relu()
    value = numpy_helper.from_array(np.ones(2, np.float32), "const_value")
    value.ClearField("raw_data")
    value.data_location = TensorProto.EXTERNAL
    for key, text in (("location", "../../outside/secret.bin"), ("offset", "0"), ("length", "8")):
        set_external(value, key, text)
    model.graph.node.insert(0, helper.make_node("Constant", [], ["unused_const"], name="const", value=value))
    return Case(f"ext_constant/{save(model, folder / 'model.onnx')}", "escapes the model's folder")


@case()
def external_in_subgraph(tree: Path, outside: Path) -> Case:
    folder = tree / "ext_subgraph"
    folder.mkdir()
    model = nested_if(2)
    then = lambda node: next(a.g for a in node.attribute if a.name == "then_branch")  # noqa: E731
    inner = then(then(model.graph.node[0]).node[0])
    tensor = numpy_helper.from_array(np.ones(2, np.float32), "inner_w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, text in (("location", "/etc/passwd"), ("length", "8")):
        set_external(tensor, key, text)
    inner.initializer.append(tensor)
    return Case(f"ext_subgraph/{save(model, folder / 'model.onnx')}", "is an absolute path")


@case()
def empty_file(tree: Path, outside: Path) -> Case:
    (tree / "empty.onnx").write_bytes(b"")
    return Case("empty.onnx", "the file is empty")


@case()
def truncated(tree: Path, outside: Path) -> Case:
    data = conv_bn_relu().SerializeToString()
    (tree / "truncated.onnx").write_bytes(data[: len(data) * 2 // 3])
    return Case("truncated.onnx", "not a valid ONNX model")


@case()
def random_bytes(tree: Path, outside: Path) -> Case:
    (tree / "random.onnx").write_bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return Case("random.onnx", "not a valid ONNX model")


@case()
def pickle_file(tree: Path, outside: Path) -> Case:
    (tree / "weights.onnx").write_bytes(pickle.dumps({"state_dict": [1.0, 2.0]}, protocol=4))
    return Case("weights.onnx", "this is a Python pickle")


@case()
def zip_archive(tree: Path, outside: Path) -> Case:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps([1, 2, 3]))
    (tree / "archive.onnx").write_bytes(buffer.getvalue())
    return Case("archive.onnx", "this is a zip archive")


@case()
def git_lfs_pointer(tree: Path, outside: Path) -> Case:
    (tree / "lfs.onnx").write_bytes(LFS_POINTER)
    return Case("lfs.onnx", "this is a Git LFS pointer; run git lfs pull")


@case()
def gzip_file(tree: Path, outside: Path) -> Case:
    (tree / "model.onnx.gz.onnx").write_bytes(gzip.compress(conv_bn_relu().SerializeToString()))
    return Case("model.onnx.gz.onnx", "gzip-compressed")


@case()
def nested_subgraphs(tree: Path, outside: Path) -> Case:
    return Case(save(nested_if(20), tree / "nested20.onnx"), "subgraphs are nested 17 deep")


@case()
def nested_past_protobuf_limit(tree: Path, outside: Path) -> Case:
    (tree / "nested40.onnx").write_bytes(serialize_nested(40))
    return Case("nested40.onnx", "nested too deeply")


@case()
def opset_newer_than_onnx(tree: Path, outside: Path) -> Case:
    model = conv_bn_relu()
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    return Case(save(model, tree / "opset_future.onnx"), "newer than the installed onnx")


@case()
def ir_version_newer_than_onnx(tree: Path, outside: Path) -> Case:
    model = conv_bn_relu()
    model.ir_version = onnx.IR_VERSION + 3
    return Case(save(model, tree / "ir_future.onnx"), f"IR version {onnx.IR_VERSION + 3} is newer")


@case()
def opset_imported_twice(tree: Path, outside: Path) -> Case:
    model = conv_bn_relu()
    model.opset_import.append(helper.make_opsetid("ai.onnx", 9))
    return Case(save(model, tree / "opset_twice.onnx"), "imports opset ai.onnx twice")


@case()
def standard_ops_without_opset(tree: Path, outside: Path) -> Case:
    model = conv_bn_relu()
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    return Case(save(model, tree / "no_default_opset.onnx"), "imports no ai.onnx opset")


@case()
def cycle(tree: Path, outside: Path) -> Case:
    model = conv_bn_relu()
    graph = model.graph
    graph.node.insert(0, helper.make_node("Add", ["x", "y"], ["x2"], name="feedback"))
    graph.node[1].input[0] = "x2"
    return Case(save(model, tree / "cycle.onnx"), "has a cycle")


@case()
def constant_of_shape_bomb(tree: Path, outside: Path) -> Case:
    model = conv_bn_relu()
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array([1 << 40], np.int64), "huge_shape"))
    graph.node.insert(0, helper.make_node("ConstantOfShape", ["huge_shape"], ["s_bomb"], name="bomb",
                                          value=numpy_helper.from_array(np.ones(1, np.float32))))
    graph.node[2].input[1] = "s_bomb"
    return Case(save(model, tree / "bomb.onnx"), "would allocate")


@case()
def node_without_op_type(tree: Path, outside: Path) -> Case:
    model = conv_bn_relu()
    model.graph.node[2].op_type = ""
    return Case(save(model, tree / "no_op_type.onnx"), "has no op_type")


@case()
def value_produced_twice(tree: Path, outside: Path) -> Case:
    model = conv_bn_relu()
    model.graph.node[2].output[0] = "c"
    return Case(save(model, tree / "duplicate_output.onnx"), "produces value 'c' twice")


@case()
def attribute_of_wrong_type(tree: Path, outside: Path) -> Case:
    model = conv_bn_relu()
    bn = model.graph.node[1]
    del bn.attribute[:]
    bn.attribute.append(helper.make_attribute("epsilon", "tiny"))
    return Case(save(model, tree / "attr_type.onnx"), "attribute 'epsilon' of type STRING")


@case()
def attribute_without_type(tree: Path, outside: Path) -> Case:
    model = conv_bn_relu()
    bn = model.graph.node[1]
    bn.attribute[0].type = onnx.AttributeProto.UNDEFINED
    return Case(save(model, tree / "attr_untyped.onnx"), "attribute 'epsilon' of type UNDEFINED")


@case()
def tensor_data_shorter_than_shape(tree: Path, outside: Path) -> Case:
    model = conv_bn_relu()
    scale = model.graph.initializer[1]
    scale.raw_data = scale.raw_data[:4]
    return Case(save(model, tree / "short_tensor.onnx"), "has 4 bytes of data but its shape [2]")


@case()
def tensor_of_unknown_type(tree: Path, outside: Path) -> Case:
    model = conv_bn_relu()
    model.graph.initializer[1].data_type = 99
    return Case(save(model, tree / "unknown_type.onnx"), "unknown element type 99")


# -- hostile-looking but valid --------------------------------------------------------------------------
@case(ACCEPTED)
def custom_domain_ops(tree: Path, outside: Path) -> Case:
    model = conv_bn_relu()
    model.graph.node.insert(0, helper.make_node("FancyOp", ["x"], ["x_custom"], domain="com.example", name="fancy"))
    model.graph.node[1].input[0] = "x_custom"
    model.opset_import.append(helper.make_opsetid("com.example", 42))
    return Case(save(model, tree / "custom.onnx"), "")


@case(ACCEPTED)
def binary_model_with_text_extension(tree: Path, outside: Path) -> Case:
    return Case(save(conv_bn_relu(), tree / "model.txt"), "")


@case(ACCEPTED)
def symlink_inside_tree(tree: Path, outside: Path) -> Case:
    (tree / "real").mkdir()
    save(conv_bn_relu(), tree / "real" / "model.onnx")
    (tree / "alias.onnx").symlink_to(Path("real") / "model.onnx")
    return Case("alias.onnx", "")


@case(ACCEPTED)
def nodes_out_of_order(tree: Path, outside: Path) -> Case:
    model = conv_bn_relu()
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    return Case(save(model, tree / "unsorted.onnx"), "")


@case(ACCEPTED)
def valid_external_data(tree: Path, outside: Path) -> Case:
    return _external_case(tree, "ext_valid", lambda m, f: None, "")


@case(ACCEPTED)
def nested_within_limit(tree: Path, outside: Path) -> Case:
    return Case(save(nested_if(8), tree / "nested8.onnx"), "")


# -- building -------------------------------------------------------------------------------------------
def prepare(root: Path) -> tuple[Path, Path]:
    """OUT/tree (marked as a Git working tree) and OUT/outside."""
    tree, outside = root / "tree", root / "outside"
    for folder in (tree / ".git", outside):
        folder.mkdir(parents=True, exist_ok=True)
    return tree, outside


def build(root: Path, name: str) -> tuple[Path, Case]:
    """Build one case (refused or accepted) under `root`; returns the tree folder and the case."""
    tree, outside = prepare(root)
    return tree, {**CASES, **ACCEPTED}[name](tree, outside)


def build_all(root: Path) -> dict[str, Case]:
    tree, outside = prepare(root)
    return {name: builder(tree, outside) for name, builder in {**CASES, **ACCEPTED}.items()}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    root = Path(argv[0])
    for name, built in build_all(root).items():
        verdict = "accepted" if name in ACCEPTED else f"refused: {built.needle}"
        print(f"{name:34} {built.target:40} {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
