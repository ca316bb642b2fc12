"""Remember the line of user code that built each nn.Module while a factory runs.

A finding on `nn.BatchNorm2d` is acted on where the layer was written (`nn.BatchNorm2d(64)` in `__init__` or
in an `nn.Sequential(...)` list), which the forward stack trace of an `nn.Sequential` never shows: every
frame of that call is inside torch. So while the user's module is imported and the factory called,
`nn.Module.__init__` is wrapped to record the innermost frame outside torch and bnlint.
"""

from __future__ import annotations

import functools
import sys
from contextlib import contextmanager

import torch

from bnlint.torch_frontend.sourcemap import is_library_file, library_roots


class ConstructionSites:
    """id(module) -> (file, line) of the user code that constructed it (kept alive with the modules)."""

    def __init__(self):
        self._sites: dict[int, tuple[str, int]] = {}
        self._modules: list[torch.nn.Module] = []  # keeps ids unique while the sites are in use

    def record(self, module: torch.nn.Module, frame) -> None:
        if id(module) in self._sites:
            return
        roots = library_roots()
        while frame is not None:
            path = frame.f_code.co_filename
            if not is_library_file(path, roots):
                self._sites[id(module)] = (path, frame.f_lineno)
                self._modules.append(module)
                return
            frame = frame.f_back

    def site_of(self, module: torch.nn.Module) -> tuple[str, int] | None:
        return self._sites.get(id(module))

    def __len__(self) -> int:
        return len(self._sites)


@contextmanager
def recording_construction_sites():
    """Within the block, every nn.Module constructed is recorded in the yielded ConstructionSites."""
    sites = ConstructionSites()
    original = torch.nn.Module.__init__

    @functools.wraps(original)
    def recording_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        sites.record(self, sys._getframe(1))

    torch.nn.Module.__init__ = recording_init
    try:
        yield sites
    finally:
        torch.nn.Module.__init__ = original
