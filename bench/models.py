"""The bench models: what they are (ModelSpec), where they live (a cache folder), and their files.

Nothing is downloaded: every model is generated from a seed by build_models.py and written once into the
cache, keyed by its spec, so a second bench run starts measuring at once. Building runs in a child process
and this module imports neither numpy nor onnx: the bench's own process must stay small, because Linux
charges a child's peak RSS (`ru_maxrss`) with its parent's peak at the time of fork+exec.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

SPEC_VERSION = 1  # bump when the generated models change, so stale caches are rebuilt
BUILDER = Path(__file__).resolve().parent / "build_models.py"


@dataclass(frozen=True)
class ModelSpec:
    """A chain of `blocks` Conv(3x3, pad 1) + BatchNormalization + Relu blocks on a channels x size x size input."""

    name: str
    blocks: int
    channels: int
    size: int = 4
    external: bool = False  # weights in one `<name>.onnx.data` file beside the model
    kind: str = "depth"  # "depth" (scaling series), "wide" (big weights), "external"

    @property
    def nodes(self) -> int:
        return 3 * self.blocks

    @property
    def weight_bytes(self) -> int:
        per_block = self.channels * self.channels * 9 + 5 * self.channels  # conv W + B, BN scale/bias/mean/var
        return 4 * per_block * self.blocks

    def folder(self, cache: Path) -> Path:
        return cache / f"{self.name}-v{SPEC_VERSION}"

    def stamp(self) -> str:
        return json.dumps({**asdict(self), "version": SPEC_VERSION}, sort_keys=True)


def _build(args: list[str]) -> None:
    subprocess.run([sys.executable, str(BUILDER), *args], check=True)


def ensure_model(spec: ModelSpec, cache: Path) -> Path:
    """The path of the model for `spec`, built into `cache` unless an identical build is already there."""
    folder = spec.folder(cache)
    path = folder / f"{spec.name}.onnx"
    stamp = folder / "spec.json"
    if path.exists() and stamp.exists() and stamp.read_text() == spec.stamp():
        return path
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    _build(["model", spec.stamp(), str(path)])
    stamp.write_text(spec.stamp())
    return path


def ensure_folder(cache: Path, count: int, blocks: int = 8, channels: int = 4) -> Path:
    """A folder of `count` small models (8 distinct seeds, copied) for folder mode."""
    folder = cache / f"folder-{count}x{blocks}-v{SPEC_VERSION}"
    stamp = folder / ".complete"
    if stamp.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    _build(["folder", str(folder), str(count), str(blocks), str(channels)])
    stamp.write_text(str(count))
    return folder


def model_bytes(path: Path) -> int:
    """Bytes on disk of the model file and its external data files."""
    total = path.stat().st_size
    for sibling in path.parent.glob(path.name + ".data"):
        total += sibling.stat().st_size
    return total


def remove_output(path: str | os.PathLike) -> None:
    """Delete a tool's output model and any external data it wrote beside it."""
    path = Path(path)
    folder = path.parent
    if folder.exists():
        for entry in folder.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
