"""The process behind each run of ``mlbseg repeat``: train (or resume) one run, then evaluate it.

``python -m mlbseg.repeat.worker --task seg --config CONFIG --run-dir DIR [--set KEY=VALUE ...]
[--resume | --evaluate-only] [--ignore-sigterm]``. Training and evaluation share one process, so the
libraries are imported once per run. Exit code 0 on success; 2 for a mistake in the input (one
``Error: ...`` line on stderr, as the ``mlbseg`` commands print it); 130/143 after SIGINT/SIGTERM (one
line; the training engine cleans up and ``checkpoints/last.pt`` stays the last complete epoch, which the
next ``mlbseg repeat`` resumes); 1 with a traceback for anything else. With ``--ignore-sigterm`` (the
worker of a submitit job, :mod:`~mlbseg.repeat.slurm`) only SIGINT stops it: Slurm's SIGTERM is a warning
to the job, which decides.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from mlbseg.engine.signals import Interrupted, stop_on_signals
from mlbseg.errors import UserError
from mlbseg.repeat.tasks import get_task


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlbseg.repeat.worker", description="Train and evaluate one run of `mlbseg repeat`."
    )
    parser.add_argument("--task", required=True, choices=("seg", "cls"))
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    stage = parser.add_mutually_exclusive_group()
    stage.add_argument("--resume", action="store_true", help="Continue from checkpoints/last.pt.")
    stage.add_argument("--evaluate-only", action="store_true", help="Only evaluate checkpoints/final.pt.")
    parser.add_argument(
        "--ignore-sigterm", action="store_true", help="Stop on SIGINT only (the caller handles SIGTERM)."
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker with ``argv`` (default: the command line); return the exit code."""
    args = _parser().parse_args(argv)
    try:
        with stop_on_signals():
            if args.ignore_sigterm:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            task = get_task(args.task)
            cfg = task.load(args.config, args.overrides)
            if not args.evaluate_only:
                task.train(cfg, args.run_dir, args.resume)
                print(f"trained: {args.run_dir}", flush=True)
            summary = task.evaluate(args.run_dir)
    except UserError as err:
        print(f"Error: {err}", file=sys.stderr, flush=True)
        return 2
    except Interrupted as err:
        print(f"{err}; mlbseg repeat resumes this run", file=sys.stderr, flush=True)
        return err.exit_code
    print(f"evaluated: {json.dumps(task.values(summary))}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
