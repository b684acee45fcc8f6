"""Repeated runs: every (method, noise, seed) as its own run, then a Table-8 summary.

The protocol is docs/evaluation.md §4, the processes docs/design.md §8.

``mlbseg repeat CONFIG --seeds 0..4 --noise L1,L2,L3 --methods baseline,mlbseg [--jobs N]`` trains and
evaluates each combination in ``OUT/<method>-<noise>-seed<k>/`` as a separate process (or, with
``--launcher submitit``, as one job of a Slurm job array), skips finished runs, resumes interrupted ones,
and writes ``OUT/table.md``, ``table.csv`` and ``table.json``.

- :mod:`~mlbseg.repeat.tasks`: what differs between segmentation and classification configs;
- :mod:`~mlbseg.repeat.plan`: the list of runs, the state of each run folder, the worker command for it;
- :mod:`~mlbseg.repeat.scheduler`: N processes at a time, K per GPU or a share of the CPU cores;
- :mod:`~mlbseg.repeat.slurm`: one submitit job per run, its requeue, and the job record;
- :mod:`~mlbseg.repeat.worker`: the process that trains and evaluates one run;
- :mod:`~mlbseg.repeat.table`: mean ± std over seeds;
- :mod:`~mlbseg.repeat.driver`: :func:`repeat`, which ties them together.
"""

from __future__ import annotations

from mlbseg.repeat.driver import RepeatResult, repeat
from mlbseg.repeat.plan import parse_list, parse_seeds

__all__ = ["RepeatResult", "parse_list", "parse_seeds", "repeat"]
