"""Convert between mlbseg's prepared folders and the published L2B / MLB-Seg `.npy` layout.

    python data_prep/legacy_npy.py export PREPARED OUT [--level L2]   # for the reference code
    python data_prep/legacy_npy.py import ORIGINAL_DATA RAW           # their {img, label} volumes -> NIfTI

Both call mlbseg.prep.legacy (layouts and caveats are described there and in data_prep/README.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlbseg.errors import UserError
from mlbseg.prep.legacy import export_legacy, import_legacy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="prepared folder -> original_data/, train/, meta_train/")
    export.add_argument("prepared", type=Path)
    export.add_argument("out", type=Path)
    export.add_argument("--level", default="L2", help="noise level of train/*.npy noisy_label (L1, L2, L3)")
    imports = commands.add_parser("import", help="reference {img, label} volumes -> NIfTI pairs for prepare")
    imports.add_argument("volumes", type=Path)
    imports.add_argument("raw", type=Path)
    args = parser.parse_args()
    try:
        if args.command == "export":
            counts = export_legacy(args.prepared, args.out, level=args.level)
            print(f"Wrote {counts} slice/volume files into {args.out}")
        else:
            ids = import_legacy(args.volumes, args.raw)
            print(f"Wrote {len(ids)} NIfTI pairs into {args.raw}; next: mlbseg prepare {args.raw} PREPARED")
    except UserError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
