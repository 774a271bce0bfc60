"""The garbage collector of a long-running server process.

Everything made while a server starts (modules, protobuf descriptors, the
configuration, the model) lives as long as the process. Left in the
collector's view, each full collection walks all of it again, and that walk
holds the GIL: a pause every tenant's call waits behind. Freezing the
start-up objects moves them out of the collections, so a pause is as long as
what requests themselves keep alive.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Collects once, then moves every object alive now out of future collections."""
    gc.collect()
    gc.freeze()
