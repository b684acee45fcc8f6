"""The README's Python example (section "Your own data", ``mlbseg.api``) runs as a doctest, as printed.

Synth (three classes, two channels, a second rater) → prepare → train the smoke config on the rater's
labels → evaluate per class → predict a volume, in a temporary folder.
"""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def _python_example() -> str:
    section = README.read_text(encoding="utf-8").split("## Your own data", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    return block


def test_the_readme_api_example_runs_as_printed(tmp_path, monkeypatch, restore_determinism, one_thread):
    monkeypatch.chdir(tmp_path)
    example = doctest.DocTestParser().get_doctest(_python_example(), {}, "README", str(README), 0)
    assert len(example.examples) >= 8
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(example)
    assert runner.summarize(verbose=False).failed == 0
    assert (tmp_path / "runs" / "r2" / "summary.json").is_file()
