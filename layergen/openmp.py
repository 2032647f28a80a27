"""OpenMP waiting that does not collapse when another process shares the cores.

The entry points (train.py, demo.py, generate.py, ...) import this module first, before
torch loads its OpenMP runtime. GNU OpenMP threads wait for their peers by spinning (300 000
spins by default); beside a second CPU-bound process a spinning thread burns the time slice
its peer needs. On 2 cores the demo's diffusion step fell from 58 samples/s on idle cores to
2 beside a process multiplying matrices; with 10 000 spins it keeps 56 idle and 21 loaded
(``bench/bench_threads_under_load.py``; passive waiting: 36 / 25). A value the user has set
is kept; once torch is loaded the setting can no longer take effect and is left alone.
"""

from __future__ import annotations

import os
import sys

GOMP_SPIN_COUNT = "10000"

if "torch" not in sys.modules:
    os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPIN_COUNT)
