"""OpenMP wait policy for processes that run torch from several threads (the server and the web demo).

Why: the engine generates on a fresh thread per request, and the server / gradio call it from worker
threads. With libgomp's default (active) wait policy, the idle OpenMP team of each finished thread keeps
spinning on the cores, so every later request competes with them: measured with ``thinchat serve`` on the
135M offline base on 2 cores, 16-token requests took 4.4 s, then 33 s and 23 s; with ``PASSIVE`` they
took 2.4, 2.2 and 1.9 s. The variable must be set before torch loads its OpenMP runtime, and a value the
user set is kept.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)


def passive_omp_threads() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy; warn if torch is already loaded."""
    if "OMP_WAIT_POLICY" in os.environ:
        return
    if "torch" in sys.modules:
        log.debug("torch already imported: OMP_WAIT_POLICY=PASSIVE would have no effect; not set")
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
