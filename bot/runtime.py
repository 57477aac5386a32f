"""Process-level tuning for the long-running bot.

Why: acks must leave within Slack's 3 s, and their tail latency is set less by our code than by
CPython's cyclic garbage collector. With the default thresholds (700, 10, 10) a busy bot runs a
full collection every few seconds over every object it ever loaded — SQLAlchemy, bolt, the
Slack SDK, thousands of compiled statements — and each stalls the event loop for tens of
milliseconds. `bench/ack.py` measured steady-load p99 at ~96 ms with the defaults and ~5 ms with
this tuning. Reference counting still frees almost everything at once; only cycles wait longer.
"""

from __future__ import annotations

import gc

GC_THRESHOLDS = (10_000, 20, 100)


def tune_gc() -> None:
    """Call once start-up is done: freeze what start-up allocated (it lives as long as the
    process, so scanning it is wasted work) and collect young objects less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
