"""``mtl-fast demo``: train the classic MTL network with several multi-task strategies and compare them, or run
the papers' two-task toy problem (``mtl-fast demo toy``).

Split by concern: :mod:`.strategies` (the table of strategies), :mod:`.training`, :mod:`.reporting` (noise band,
conflict summary, table, plot, JSON), :mod:`.toy` and :mod:`.cli`.
"""
from .cli import main

__all__ = ["main"]
