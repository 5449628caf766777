"""freeze_long_lived_objects (after each route load under twistd): it freezes the new
table out of the collector, and first lets go of cyclic garbage an earlier freeze kept."""

from __future__ import annotations

import gc
import weakref

from osp_server.services import freeze_long_lived_objects


class _Node:
    """Something that can sit in a reference cycle."""

    other: object = None


def test_a_later_freeze_collects_what_an_earlier_one_kept() -> None:
    try:
        cycle = _Node()
        cycle.other = cycle
        ref = weakref.ref(cycle)
        gc.freeze()  # e.g. the previous route load, with this request in flight
        del cycle
        gc.collect()
        assert ref() is not None  # frozen objects are never collected...
        freeze_long_lived_objects()
        assert ref() is None  # ...until the next freeze collects first
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
