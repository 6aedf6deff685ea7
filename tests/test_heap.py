"""The collector's full passes skip what a process built at start-up, and only while it serves."""

from __future__ import annotations

import gc
import weakref

from steering_server.heap import startup_objects_frozen


class _Cycle:
    def __init__(self) -> None:
        self.me = self  # only the cyclic collector can free it


def test_startup_objects_are_not_walked_while_serving_and_are_collectable_after() -> None:
    garbage = weakref.ref(_Cycle())  # already dropped: collected before the freeze, not kept for the process
    startup = _Cycle()
    startup_ref = weakref.ref(startup)
    with startup_objects_frozen() as frozen:
        assert garbage() is None
        assert frozen > 0 and gc.get_freeze_count() > 0
        del startup
        gc.collect()
        assert startup_ref() is not None  # frozen: a full collection did not walk it
        later = _Cycle()  # made while serving: collected as usual
        later_ref = weakref.ref(later)
        del later
        gc.collect()
        assert later_ref() is None
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert startup_ref() is None  # unfrozen: what the caller dropped (an earlier seed's models) is freed
