"""Describe the machine and the package versions, so figures can be compared across runs."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

PACKAGES = ("bnlint", "onnx", "onnxruntime", "onnx-ir", "onnxscript", "onnxoptimizer", "onnxsim", "onnxslim",
            "numpy", "ml_dtypes", "protobuf", "matplotlib")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def describe() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gb": _ram_gb(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
        "packages": {name: _version(name) for name in PACKAGES},
    }


def summary_lines(info: dict) -> list[str]:
    packages = ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v)
    missing = [k for k, v in info["packages"].items() if not v]
    lines = [
        f"machine: {info['cpu']}, {info['cores']} cores, {info['ram_gb']} GB RAM, Python {info['python']}, "
        f"{info['platform']}",
        f"load average at start: {info['load_average_at_start']} (anything above 0 means other work shares the CPU)",
        f"packages: {packages}",
    ]
    if missing:
        lines.append(f"not installed: {', '.join(missing)} (their cells read 'not available')")
    return lines
