"""Shared by the benchmark scripts: describe the machine and update one section of docs/performance.md.

Each benchmark owns one section, delimited by ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``; running
it again replaces that section and leaves the others alone.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
from pathlib import Path

PERFORMANCE_MD = Path(__file__).resolve().parents[1] / "docs" / "performance.md"
HEADER = (
    "# Performance\n\nNumbers written by the scripts in `benchmarks/`; "
    "each section says the machine and date.\n"
)


def machine() -> str:
    """One line naming the processor, core count, accelerator and library versions."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores, {gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def print_json(record: dict) -> None:
    """Print the benchmark's one JSON line."""
    print(json.dumps(record, sort_keys=True))


def update_section(name: str, title: str, body: str, path: Path = PERFORMANCE_MD) -> None:
    """Replace (or append) the section ``name`` of ``path`` (default docs/performance.md) with ``body``."""
    today = datetime.date.today().isoformat()
    block = f"<!-- bench:{name} -->\n## {title}\n\n_{today}, {machine()}_\n\n{body.strip()}\n"
    block += f"<!-- /bench:{name} -->"
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
