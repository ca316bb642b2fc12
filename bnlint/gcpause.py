"""Pause Python's cyclic garbage collector while one model is linted or rewritten.

Loading and linting allocate tens of objects per node that all stay alive until the model is done. Each
automatic collection walks every live container object, so on a deep model the collector ran dozens of
times over the same, still-alive graph: 15-25% of `check` time. Reference counting still frees everything
that is not in a cycle; the graph view breaks its own cycles when released (Model.release), and the
collector is enabled again afterwards, so nothing accumulates across models or calls.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def imports_uncollected() -> Iterator[None]:
    """Import a command's modules with the collector paused, then freeze what is alive (gc.freeze).

    Importing onnx and numpy creates hundreds of thousands of objects that live until exit; the collector
    ran full collections over them while they were being created (~10 ms of every `bnlint check`, a sixteenth
    of linting a small model). Frozen, they are also left out of every later collection."""
    with cyclic_gc_paused():
        yield
        gc.freeze()  # before the collector runs again: else its next pass scans everything just imported
