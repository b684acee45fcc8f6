"""Merge PROMISE12's TrainingData_Part1..3 folders into one RAW folder that `mlbseg prepare` reads.

    python data_prep/promise12_merge.py TrainingData_Part1 TrainingData_Part2 TrainingData_Part3 RAW [--copy]

Each part is checked with mlbseg's own case discovery (every image has its mask); the volumes and their
.raw data files are symlinked (or copied with --copy) into RAW, which is written atomically.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from mlbseg.engine.atomic import atomic_folder
from mlbseg.errors import UserError
from mlbseg.prep.discovery import discover_cases


def _case_files(part: Path) -> list[Path]:
    """The volume headers and data files of every case in ``part`` (e.g. Case00.mhd, Case00.raw, ...)."""
    cases, _ = discover_cases(part)
    stems = {path.name.split(".")[0] for case in cases for path in (case.image, case.mask)}
    return sorted(path for path in part.iterdir() if path.is_file() and path.name.split(".")[0] in stems)


def merge_parts(parts: list[Path], out: Path, copy: bool) -> int:
    """Link (or copy) the cases of every part into ``out``; return the number of cases."""
    seen: dict[str, Path] = {}
    with atomic_folder(out) as folder:
        for part in parts:
            for path in _case_files(part):
                if path.name in seen:
                    raise UserError(
                        f"{path}: {path.name} is also in {seen[path.name].parent}; parts must not overlap"
                    )
                seen[path.name] = path
                if copy:
                    shutil.copy2(path, folder / path.name)
                else:
                    os.symlink(path.absolute(), folder / path.name)
    return len(discover_cases(out)[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", type=Path, help="TrainingData_Part1 … folders")
    parser.add_argument("out", type=Path, help="new folder to create")
    parser.add_argument("--copy", action="store_true", help="copy the files instead of symlinking them")
    args = parser.parse_args()
    try:
        count = merge_parts(args.parts, args.out, args.copy)
    except UserError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    print(f"{count} cases in {args.out}; next: mlbseg prepare {args.out} PREPARED --split paper")
    return 0


if __name__ == "__main__":
    sys.exit(main())
