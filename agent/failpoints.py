"""Failpoints: named places where a test can make the process die, for real (SIGKILL).

``PHYLOOP_FAILPOINT="NAME@ROUND"`` (comma-separated for several) kills the process the first
time execution reaches ``failpoint(NAME, ROUND)``; ``NAME`` alone matches any round. Names:
``enter:<node>`` / ``exit:<node>`` around every graph node, and ``mid:generate``,
``mid:judge``, ``mid:train`` inside the long stages. With the variable unset a failpoint
costs one dictionary lookup. Crash-and-resume tests use this to kill a real subprocess at
exact places instead of racing a timer.
"""

from __future__ import annotations

import os
import signal


def _armed() -> set[str]:
    spec = os.environ.get("PHYLOOP_FAILPOINT", "")
    return {s.strip() for s in spec.split(",") if s.strip()}


def failpoint(name: str, round: int | None = None) -> None:
    armed = _armed()
    if not armed:
        return
    if name in armed or (round is not None and f"{name}@{round}" in armed):
        os.kill(os.getpid(), signal.SIGKILL)
