"""Keep Python's cyclic garbage collector off the objects a process builds once and keeps.

The batching loop makes short-lived objects fast enough that Python runs a full (oldest-generation) collection every
few seconds, and a full collection walks every tracked object: with torch and transformers loaded, ~390,000 of them.
Measured on a 2-core CPU: in `benchmarks/serving.py`'s workload, 8 full collections in about a minute, up to 0.16 s
each, every request in flight waiting on the batching thread meanwhile; in the organism's evaluation (models read
from an earlier build), 61 full collections, 12.6 s of it. Objects that exist once start-up is done (modules, the
model, the tokenizer, the organism's corpus tables) live as long as the process: frozen (`gc.freeze`), they are no
longer walked (the same evaluation frozen: 87 full collections, 3.9 s).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["startup_objects_frozen"]


@contextmanager
def startup_objects_frozen() -> Iterator[int]:
    """Collect, then move every object still alive into the permanent generation for the body (yields how many);
    unfreeze after it, so what the body's caller drops afterwards (an earlier seed's models) can be collected again.
    Enter where a process has built its long-lived state: a server once its engine serves, a build once its models
    are loaded. Not per request: each entry runs a full collection."""
    gc.collect()
    gc.freeze()
    try:
        yield gc.get_freeze_count()
    finally:
        gc.unfreeze()
