"""Which cases train on noisy labels, which form the clean meta set, which are held out for testing.

Three ways (``mlbseg prepare --split``):

- ``paper``: the published PROMISE12 split (docs/reference.md §6.2): 37 train, 3 meta, 10 test; needs
  Case00–Case49 (other cases present are left out);
- ``random``: meta and test drawn from the cases with a reference mask, ``SeedSequence(seed,
  spawn_key=(1,))`` over their sorted ids (independent of listing order), ``--meta N`` and ``--test N``
  of them, by default the 37/3/10 proportions of those cases (rounded, at least one each); every other
  case (those without a reference included) trains;
- a YAML or JSON file with the keys ``train``, ``meta`` and ``test``, each a non-empty list of case ids
  (plain file names: :func:`~mlbseg.prep.manifest.check_case_id`).

A split is ``{"train": [...], "meta": [...], "test": [...]}`` with sorted ids; cases in none of the
three lists are not prepared. Meta and test cases need a reference mask; a case without one (only a
noisy annotation) can only train.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from mlbseg.errors import UserError
from mlbseg.prep.manifest import check_case_id

SPLITS = ("train", "meta", "test")
PAPER_META = ("Case29", "Case14", "Case05")
PAPER_TEST = (
    "Case16",
    "Case35",
    "Case34",
    "Case49",
    "Case23",
    "Case12",
    "Case28",
    "Case43",
    "Case20",
    "Case13",
)
PAPER_CASES = tuple(f"Case{index:02d}" for index in range(50))
PROPORTIONS = {"meta": 3 / 50, "test": 10 / 50}
_RANDOM_SPLIT_STREAM = 1  # spawn key: keeps the split's draws apart from other uses of the seed

Split = dict[str, list[str]]


def paper_split(available: Sequence[str]) -> Split:
    """The published 37/3/10 PROMISE12 split; UserError naming the missing ids if any are absent."""
    missing = sorted(set(PAPER_CASES) - set(available))
    if missing:
        shown = ", ".join(missing[:5]) + (", …" if len(missing) > 5 else "")
        raise UserError(f"--split paper needs PROMISE12 cases Case00–Case49; missing {len(missing)}: {shown}")
    held_out = set(PAPER_META) | set(PAPER_TEST)
    train = [case for case in PAPER_CASES if case not in held_out]
    return {"train": train, "meta": sorted(PAPER_META), "test": sorted(PAPER_TEST)}


def _sizes(eligible: int, available: int, meta: int | None, test: int | None) -> dict[str, int]:
    """Meta and test counts: as given, else the 37/3/10 proportions of ``eligible`` (rounded, at least 1)."""
    given = {"meta": meta, "test": test}
    sizes = {
        name: given[name] if given[name] is not None else max(1, int(np.floor(eligible * share + 0.5)))
        for name, share in PROPORTIONS.items()
    }
    if min(sizes.values()) < 1:
        raise UserError(f"--meta {sizes['meta']} --test {sizes['test']}: expected at least one case each")
    if sizes["meta"] + sizes["test"] > eligible or sizes["meta"] + sizes["test"] >= available:
        raise UserError(
            f"--meta {sizes['meta']} --test {sizes['test']}: only {eligible} case(s) have a reference mask "
            f"(meta and test need one) and at least one of the {available} must be left to train"
        )
    return sizes


def random_split(
    available: Sequence[str],
    seed: int,
    *,
    referenced: Sequence[str] | None = None,
    meta: int | None = None,
    test: int | None = None,
) -> Split:
    """Meta and test drawn from ``referenced`` (default: all), seeded; every other case trains.

    The counts are ``meta`` and ``test``, by default the 37/3/10 proportions of the referenced cases
    (rounded, at least one each).

    Example:
        >>> {name: len(ids) for name, ids in random_split([f"c{i}" for i in range(50)], seed=0).items()}
        {'train': 37, 'meta': 3, 'test': 10}
    """
    ids = sorted(available)
    eligible = ids if referenced is None else sorted(referenced)
    if len(ids) < 3 or len(eligible) < 2:
        raise UserError(
            f"--split random needs at least 3 cases (one per split), two with a reference mask; found "
            f"{len(ids)}, {len(eligible)} with a reference"
        )
    sizes = _sizes(len(eligible), len(ids), meta, test)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_RANDOM_SPLIT_STREAM,)))
    order = [eligible[i] for i in rng.permutation(len(eligible))]
    meta_ids, test_ids = order[: sizes["meta"]], order[sizes["meta"] : sizes["meta"] + sizes["test"]]
    held_out = set(meta_ids) | set(test_ids)
    train = [case for case in ids if case not in held_out]
    return {"train": train, "meta": sorted(meta_ids), "test": sorted(test_ids)}


def _read_split_file(path: Path) -> dict:
    try:
        content = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{path}: cannot read the split file ({reason})") from None
    if not isinstance(content, dict):
        raise UserError(f"{path}: expected a mapping with keys train, meta, test")
    return content


def file_split(path: Path, available: Sequence[str]) -> Split:
    """Read and validate a split file: known keys, non-empty lists of plain, known, non-repeated ids."""
    content = _read_split_file(path)
    unknown_keys = sorted(set(content) - set(SPLITS))
    if unknown_keys:
        raise UserError(
            f"{path}: unknown key(s) {', '.join(map(str, unknown_keys))}; expected train, meta, test"
        )
    split: Split = {}
    for name in SPLITS:
        ids = content.get(name)
        if not isinstance(ids, list) or not ids or not all(isinstance(case, str) for case in ids):
            raise UserError(f"{path}: '{name}' must be a non-empty list of case ids (strings)")
        split[name] = sorted(check_case_id(case, path) for case in ids)
    listed = Counter(case for name in SPLITS for case in split[name])
    repeated = sorted(case for case, count in listed.items() if count > 1)
    if repeated:
        raise UserError(
            f"{path}: case(s) listed more than once (splits must not overlap): {', '.join(repeated)}"
        )
    unknown = sorted(set(listed) - set(available))
    if unknown:
        raise UserError(f"{path}: unknown case id(s) not found in the raw folder: {', '.join(unknown[:5])}")
    return split


def _check_references(split: Split, referenced: Sequence[str], source: str) -> None:
    """Meta and test cases need a reference mask; UserError naming ``source`` (the split file or option)."""
    lacking = sorted(set(split["meta"] + split["test"]) - set(referenced))
    if lacking:
        raise UserError(
            f"{source}: case(s) without a reference mask in meta or test: {', '.join(lacking[:5])}; "
            "such cases can only train"
        )


def make_split(
    spec: str,
    available: Sequence[str],
    seed: int,
    *,
    referenced: Sequence[str] | None = None,
    meta: int | None = None,
    test: int | None = None,
) -> Split:
    """Resolve ``--split`` (``paper``, ``random`` or a file path) against the ``available`` case ids.

    ``referenced``: the ids with a reference mask (default: all), the only ones meta and test may hold;
    ``meta``, ``test``: the counts of a random split (``--meta``, ``--test``; random split only).
    """
    if (meta is not None or test is not None) and spec != "random":
        raise UserError(f"--meta/--test set the counts of --split random; --split {spec} fixes its own")
    referenced = sorted(available) if referenced is None else referenced
    if spec == "random":
        return random_split(available, seed, referenced=referenced, meta=meta, test=test)
    if spec == "paper":
        split, source = paper_split(available), "--split paper"
    else:
        path = Path(spec)
        if not path.is_file():
            raise UserError(
                f"--split {spec}: expected 'paper', 'random' or a YAML/JSON split file; no such file"
            )
        split, source = file_split(path, available), str(path)
    _check_references(split, referenced, source)
    return split
