"""Every step the bench times, as `prepare() -> step(model, out, external)`.

`prepare` does the imports (so a step's in-process time excludes them, and a child that runs one tool
imports only that tool: its peak RSS is not inflated by the others). Each peer is called the way its
documentation suggests for "fold BN and save", with its defaults otherwise. Models with external data are
saved with external data, as each tool supports it.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from pathlib import Path

Step = Callable[[Path, Path, bool], None]  # step(model, out, external)


class StepFailed(Exception):
    """The tool ran but did not do its job (exit code, error); the message is one line for the table."""


def _data_name(out: Path) -> str:
    return out.name + ".data"


def _save(onnx, model, out: Path, external: bool) -> None:
    if external:
        onnx.save_model(model, out, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=_data_name(out), size_threshold=1024)
    else:
        onnx.save_model(model, out)


def onnx_load() -> Step:
    import onnx

    def step(model, out, external):
        onnx.load(model)
    return step


def onnx_load_graph_only() -> Step:
    import onnx

    def step(model, out, external):
        onnx.load(model, load_external_data=False)
    return step


def onnx_load_save() -> Step:
    import onnx

    def step(model, out, external):
        _save(onnx, onnx.load(model), out, external)
    return step


def _run_cli(args: list[str]) -> None:
    """`bnlint ARGS` in this process: findings to /dev/null, exit code 0 or 1 is success."""
    from bnlint.cli import cli

    err = io.StringIO()
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(err):
        try:
            cli.main(args=args, prog_name="bnlint", standalone_mode=False)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    if code not in (0, 1):
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        raise StepFailed(lines[-1] if lines else f"exit code {code}")


def bnlint_check(output_format: str | None = None) -> Step:
    import bnlint.cli  # noqa: F401  (the import is not part of the step)
    import bnlint.lint  # noqa: F401  (imported lazily by `check`; a library caller has it loaded)

    extra = ["--format", output_format] if output_format else []

    def step(model, out, external):
        _run_cli(["check", str(model), *extra])
    return step


def view_and_output_floor(model: Path) -> Step:
    """What `bnlint check` costs before any rule logic: bnlint's own load (read, parse, safety checks), the
    node tables every rule engine needs (op types, inputs, outputs, producers with the structure checks,
    consumers, initializers), then making, sorting and printing exactly the findings `check` reports on
    `model`. The findings' fields come from one `check` run before the clock (messages included), so this
    times their creation and the report, not the rules that decide them: `bnlint check` minus this cell is
    what the rules cost, and this cell against `onnx.load` is how close any Python rule engine could get."""
    import os

    import bnlint.lint  # noqa: F401  (as in the check cell: imported, not timed)
    from bnlint.findings import Finding, Location, sort_findings
    from bnlint.gcpause import cyclic_gc_paused
    from bnlint.lint import LintOptions, run_lint
    from bnlint.report.text import render_full
    from bnlint.sources import load_target

    fields = [(tuple(f.location), f[:4], f[5:]) for f in run_lint([str(model)], LintOptions.from_cli()).findings]

    def step(model, out, external):
        with cyclic_gc_paused():  # as check runs
            loaded = load_target(str(model))
            for graph in loaded.all_graphs():
                (graph._op_types, graph._domains, graph._inputs, graph._outputs, graph._op_index, graph._producers,
                 graph._consumers, graph._initializers)
            findings = [Finding(*head, Location(*where), *tail) for where, head, tail in fields]
            with open(os.devnull, "w") as sink:
                sink.write(render_full(sort_findings(findings)))
            for graph in loaded.all_graphs():
                graph.release()
    return step


# Every output format of `check`, so a slow renderer shows up (the default `full` is the "bnlint check" cell).
CHECK_FORMATS = ("concise", "json", "json-lines", "sarif", "github", "gitlab", "junit", "markdown")


def bnlint_fix_available() -> str | None:
    """None when `bnlint fix` exists in this build, else why not."""
    import importlib.util

    if importlib.util.find_spec("bnlint.cli_fix") is None:
        return "not available: bnlint fix is not in this build (bnlint/cli_fix.py missing)"
    return None


def _bnlint_fix(verify: bool) -> Step:
    reason = bnlint_fix_available()
    if reason:
        raise StepFailed(reason)
    # onnxruntime itself is not imported here: `bnlint fix` never imports it in its own process (the
    # verification child does), and with it loaded the child could no longer be forked.
    _import_quietly("onnx", "bnlint.cli", "bnlint.cli_fix", "bnlint.fix", "bnlint.fix.report", "bnlint.onnx_loader",
                    "bnlint.safe_io", *(["bnlint.verify"] if verify else []))

    def step(model, out, external):
        _run_cli(["fix", str(model), "-o", str(out), *([] if verify else ["--no-verify"])])
        if not out.exists():
            raise StepFailed("bnlint fix wrote no output")
    return step


def _import_quietly(*modules: str) -> None:
    """Import what `bnlint fix` imports lazily, as a library caller would have it loaded (missing: fine)."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def bnlint_fix_no_verify() -> Step:
    return _bnlint_fix(verify=False)


def bnlint_fix_verify() -> Step:
    return _bnlint_fix(verify=True)


def ort_basic() -> Step:
    """onnxruntime's offline optimization: ORT_ENABLE_BASIC fuses Conv+BN and writes the optimized model."""
    import onnxruntime as ort

    def step(model, out, external):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(out)
        if external:
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", _data_name(out))
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                             "1024")
        ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return step


def onnxoptimizer_fuse_bn() -> Step:
    import onnx
    import onnxoptimizer

    def step(model, out, external):
        _save(onnx, onnxoptimizer.optimize(onnx.load(model), ["fuse_bn_into_conv"]), out, external)
    return step


def onnxsim_simplify() -> Step:
    import onnx
    import onnxsim

    def step(model, out, external):
        simplified, ok = onnxsim.simplify(onnx.load(model))
        if not ok:
            raise StepFailed("onnxsim reported that its check failed")
        _save(onnx, simplified, out, external)
    return step


def onnxslim_slim() -> Step:
    import onnxslim

    def step(model, out, external):
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a summary table
            onnxslim.slim(str(model), output_model=str(out), save_as_external_data=external)
    return step


def onnxscript_fuse_bn() -> Step:
    import onnx_ir as ir
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.rules.common import (
        fuse_batchnorm_into_conv_rule,
        fuse_batchnorm_into_conv_transpose_rule,
        fuse_batchnorm_into_gemm_rule,
    )

    rules = [fuse_batchnorm_into_conv_rule, fuse_batchnorm_into_conv_transpose_rule, fuse_batchnorm_into_gemm_rule]

    def step(model, out, external):
        ir_model = rewrite(ir.load(model), rules)
        ir.save(ir_model, out, external_data=_data_name(out) if external else None)
    return step


def ort_session(threads: int = 1):
    """A CPU session as bnlint's verification makes it: no graph optimizations, one thread, sequential."""
    import onnxruntime as ort

    def make(path: Path):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return make


def random_feed(session, seed: int = 0) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    return {i.name: rng.random([d if isinstance(d, int) else 1 for d in i.shape], dtype=np.float32)
            for i in session.get_inputs()}


def ort_two_sessions(rewritten: Path | None = None) -> Step:
    """The floor of verification: create and run a session for the original and one for the rewritten model
    (the original twice when no rewritten model is given)."""
    make = ort_session()

    def step(model, out, external):
        for path in (model, rewritten or model):
            session = make(path)
            session.run(None, random_feed(session))
    return step


STEPS: dict[str, Callable[[], Step]] = {
    "onnx.load": onnx_load,
    "onnx.load(graph only)": onnx_load_graph_only,
    "onnx load+save": onnx_load_save,
    "bnlint check": bnlint_check,
    "check floor: tables + output": view_and_output_floor,
    "bnlint fix --no-verify": bnlint_fix_no_verify,
    "bnlint fix (verify)": bnlint_fix_verify,
    "onnxruntime basic": ort_basic,
    "onnxoptimizer": onnxoptimizer_fuse_bn,
    "onnxsim": onnxsim_simplify,
    "onnxslim": onnxslim_slim,
    "onnxscript": onnxscript_fuse_bn,
    "2 onnxruntime sessions": ort_two_sessions,
    **{f"bnlint check --format {name}": (lambda name=name: bnlint_check(name)) for name in CHECK_FORMATS},
}
