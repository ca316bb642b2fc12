"""Fuzzing: mutated valid models end every `bnlint check` / `bnlint fix` run with exit 0, 1 or 2 — never a
traceback, an internal error or a signal, and never a written file when the exit code is 2.

The mutation engine is bench/fuzz.py (10,000 inputs there); these tests run it with smaller counts, plus a
hypothesis bit-flip search over the same seeds.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_spec = importlib.util.spec_from_file_location("bnlint_bench_fuzz", REPO / "bench" / "fuzz.py")
fuzz = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fuzz  # dataclasses look their module up while the file executes
_spec.loader.exec_module(fuzz)

SEEDS = fuzz.all_seeds()


def describe(report) -> str:
    return "\n".join(f"{where}: {problem} ({kept})" for where, problem, kept in report.failures)


def test_seeds_are_valid_models_that_lint(tmp_path, run_cli, monkeypatch):
    """The fuzzer starts from models bnlint reads: otherwise it would only test the error paths."""
    monkeypatch.chdir(tmp_path)
    built = fuzz.built_seeds()
    assert len(SEEDS) > len(built) >= 10
    for seed in built:
        (tmp_path / "m.onnx").write_bytes(seed.data)
        if seed.external is not None:
            (tmp_path / fuzz.DATA_NAME).write_bytes(seed.external)
        result = run_cli("check", "m.onnx", "-q")
        assert result.exit_code in (0, 1), f"{seed.name}: {result.stderr}"


def test_fuzz_check_and_fix_small_run(tmp_path):
    report = fuzz.fuzz(400, seed=1, fix_every=40, subprocess_every=200, keep=tmp_path / "failures")
    print(f"fuzzed 400 inputs, {report.runs} runs: {dict(report.histogram)}")
    assert report.failures == [], describe(report)
    assert report.runs >= 400
    exits = {key.split()[-1] for key in report.histogram if key.startswith("check")}
    assert exits == {"0", "1", "2"}  # mutants reach linting, findings and refusals alike
    assert any(key.startswith("fix") for key in report.histogram)


@pytest.mark.slow
def test_fuzz_slow_run(tmp_path):
    report = fuzz.fuzz(3000, seed=2, fix_every=25, subprocess_every=300, keep=tmp_path / "failures")
    print(f"fuzzed 3000 inputs, {report.runs} runs")
    assert report.failures == [], describe(report)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.sampled_from(range(len(SEEDS))),
       flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 7)), min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.integers(min_value=1)))
def test_bit_flips_never_crash(seed, flips, cut, tmp_path_factory, run_cli):
    folder = tmp_path_factory.mktemp("flip")
    original = SEEDS[seed]
    data = bytearray(original.data)
    for position, bit in flips:
        data[position % len(data)] ^= 1 << bit
    if cut is not None:
        del data[cut % len(data) or 1:]
    (folder / "m.onnx").write_bytes(bytes(data))
    if original.external is not None:
        (folder / fuzz.DATA_NAME).write_bytes(original.external)
    before = fuzz.folder_state(folder)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        result = run_cli("check", "m.onnx", "-q", "--jobs", "1")
    finally:
        os.chdir(cwd)
    assert result.exit_code in (0, 1, 2)
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    assert fuzz.folder_state(folder) == before
