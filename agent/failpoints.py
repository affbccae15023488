"""Failpoints: named places where a test can make the process die, for real (SIGKILL).

``PHYLOOP_FAILPOINT="NAME@ROUND"`` (comma-separated for several) kills the process the first
time execution reaches ``failpoint(NAME, ROUND)``; ``NAME`` alone matches any round. Names:
``enter:<node>`` / ``exit:<node>`` around every graph node, and ``mid:generate``,
``mid:judge``, ``mid:train`` inside the long stages. With the variable unset a failpoint
costs one dictionary lookup. Crash-and-resume tests use this to kill a real subprocess at
exact places instead of racing a timer.

In a multi-process run a ``#rankR`` suffix (``mid:train@1#rank1``) arms the failpoint in the
process of that rank only (``RANK``, set by the launcher; 0 without one); without the suffix
it fires in every process that reaches it. Only ``mid:train`` is reached by every rank (the
graph's nodes run on rank 0), so ``mid:train@1#rank1`` kills one worker in the middle of
training.
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
    keys = {name} | ({f"{name}@{round}"} if round is not None else set())
    rank = os.environ.get("RANK", "0")
    keys |= {f"{k}#rank{rank}" for k in keys}
    if keys & armed:
        os.kill(os.getpid(), signal.SIGKILL)
