"""Keep Python's cyclic garbage collector off the objects a process builds once and keeps.

The batching loop makes short-lived objects fast enough that Python runs a full (oldest-generation) collection every
few seconds, and a full collection walks every tracked object: with torch and transformers loaded, ~390,000 of them.
Measured on a 2-core CPU: in `benchmarks/serving.py`'s workload, 8 full collections in about a minute, up to 0.16 s
each, every request in flight waiting on the batching thread meanwhile; in the organism's evaluation (models read
from an earlier build), 61 full collections, 12.6 s of it. Objects that exist once start-up is done live as long as
the process: frozen (`gc.freeze`), they are no longer walked (the same evaluation frozen: 87 full collections, 3.9 s).
`serve` freezes once its engine has started (modules, model, tokenizer); the organism's commands freeze before they
build, which covers what import leaves (nearly all of the ~390,000; the models they train are made later and walked).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["startup_objects_frozen"]


@contextmanager
def startup_objects_frozen() -> Iterator[int]:
    """Collect, then move every object still alive into the permanent generation for the body (yields how many);
    unfreeze after it, so what was alive at entry and is dropped afterwards can be collected again (while frozen, a
    dropped cycle among those objects is kept). Enter where a process has built its long-lived state, once: the
    freeze is process-wide and not counted, so a nested or concurrent entry's exit unfreezes for everyone. Not per
    request: each entry runs a full collection."""
    gc.collect()
    gc.freeze()
    try:
        yield gc.get_freeze_count()
    finally:
        gc.unfreeze()
