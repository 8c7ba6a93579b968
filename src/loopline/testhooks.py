"""Fault-injection points for the crash tests of multi-step state changes (read only where they are called).

``LOOPLINE_TEST_CRASH_AFTER=<point>`` ends the process on the spot (``os._exit(137)``, as a SIGKILL would) at
that point; ``LOOPLINE_TEST_PAUSE_AFTER=<point>`` prints ``loopline paused after <point>`` on stderr and sleeps
for ``LOOPLINE_TEST_PAUSE_S`` seconds (default 60), so a test can SIGKILL the process there for real.
Points: ``registered`` (training: version registered, no gate verdict yet), ``champion_read`` (registry:
the current champion read, before the move), ``alias_moved`` (registry: alias moved, audit not completed).
"""

from __future__ import annotations

import os
import sys
import time


def crash_point(point: str) -> None:
    if os.environ.get("LOOPLINE_TEST_CRASH_AFTER") == point:
        sys.stderr.flush()
        os._exit(137)
    if os.environ.get("LOOPLINE_TEST_PAUSE_AFTER") == point:
        print(f"loopline paused after {point}", file=sys.stderr, flush=True)
        time.sleep(float(os.environ.get("LOOPLINE_TEST_PAUSE_S", "60")))
