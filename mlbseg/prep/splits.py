"""Which cases train on noisy labels, which validate, which form the clean meta set, which are tested.

Three ways (``mlbseg prepare --split``):

- ``paper``: the published PROMISE12 split (docs/reference.md §6.2): 37 train, 3 meta, 10 test; needs
  Case00–Case49 (other cases present are left out); no val, unless ``--val N`` takes N of the 37;
- ``random``: meta and test drawn from the cases with a reference mask, ``SeedSequence(seed,
  spawn_key=(1,))`` over their sorted ids (independent of listing order), ``--meta N`` and ``--test N``
  of them, by default the 37/3/10 proportions of those cases (rounded, at least one each); then val,
  ``--val N`` of the remaining cases with a reference, by default :func:`default_val_count` of them;
  every other case (those without a reference included) trains;
- a YAML or JSON file with the keys ``train``, ``meta`` and ``test``, each a non-empty list of case ids
  (plain file names: :func:`~mlbseg.prep.manifest.check_case_id`), and optionally ``val`` (a list,
  maybe empty).

Val cases are drawn from the train cases with a reference by ``SeedSequence(seed, spawn_key=(2,))`` over
their sorted ids, so meta and test stay those of the split without val. A split is ``{"train": [...],
"val": [...], "meta": [...], "test": [...]}`` with sorted ids (``val`` maybe empty); cases in none of the
lists are not prepared. Val, meta and test cases need a reference mask; a case without one (only a noisy
annotation) can only train.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from mlbseg.errors import UserError
from mlbseg.prep.manifest import check_case_id

SPLITS = ("train", "val", "meta", "test")
HELD_OUT = ("val", "meta", "test")  # the splits whose cases need a reference mask
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
VAL_SHARE = 0.1  # default val: this share of the train cases with a reference, rounded ...
MIN_CASES_FOR_VAL = 10  # ... once there are at least this many of them (else no val)
_RANDOM_SPLIT_STREAM = 1  # spawn keys: keep the split's draws apart from other uses of the seed
_VAL_STREAM = 2

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


def default_val_count(candidates: int) -> int:
    """``--val`` of a random split by default: round(10 %) of ``candidates``, at least 1, from 10 on; else 0.

    ``candidates``: the train cases with a reference mask once meta and test are drawn.

    Example:
        >>> [default_val_count(n) for n in (9, 10, 14, 15, 37)]
        [0, 1, 1, 2, 4]
    """
    if candidates < MIN_CASES_FOR_VAL:
        return 0
    return max(1, int(np.floor(candidates * VAL_SHARE + 0.5)))


def hold_out_val(split: Split, seed: int, *, referenced: Sequence[str], count: int | None) -> Split:
    """``split`` with ``count`` of its train cases with a reference moved to ``val`` (seeded).

    ``count`` None: :func:`default_val_count`. UserError naming ``--val`` when the count is negative, more
    than the train cases with a reference, or leaves no train case.
    """
    candidates = sorted(set(split["train"]) & set(referenced))
    count = default_val_count(len(candidates)) if count is None else count
    if count < 0:
        raise UserError(f"--val {count}: expected a count >= 0")
    if count > len(candidates) or count >= len(split["train"]):
        raise UserError(
            f"--val {count}: only {len(candidates)} train case(s) have a reference mask (val needs one) "
            f"and at least one of the {len(split['train'])} train cases must be left to train"
        )
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_VAL_STREAM,)))
    val = {candidates[i] for i in rng.permutation(len(candidates))[:count]}
    train = [case for case in split["train"] if case not in val]
    return {"train": train, "val": sorted(val), "meta": split["meta"], "test": split["test"]}


def _id_list(content: dict, name: str, path: Path, *, required: bool) -> list[str]:
    """The sorted ids under ``name``: a list of strings (non-empty where ``required``); UserError else."""
    ids = content.get(name, None if required else [])
    if not isinstance(ids, list) or (required and not ids) or not all(isinstance(c, str) for c in ids):
        kind = "a non-empty list" if required else "a list"
        raise UserError(f"{path}: '{name}' must be {kind} of case ids (strings)")
    return sorted(check_case_id(case, path) for case in ids)


def file_split(path: Path, available: Sequence[str]) -> Split:
    """Read and validate a split file: known keys, lists of plain, known, non-repeated ids.

    ``train``, ``meta`` and ``test`` must be non-empty; ``val`` is optional and may be empty.
    """
    content = _read_split_file(path)
    unknown_keys = sorted(set(content) - set(SPLITS), key=str)
    if unknown_keys:
        raise UserError(
            f"{path}: unknown key(s) {', '.join(map(str, unknown_keys))}; expected train, val, meta, test"
        )
    split: Split = {name: _id_list(content, name, path, required=name != "val") for name in SPLITS}
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
    """Val, meta and test cases need a reference mask; UserError naming ``source`` (the file or option)."""
    lacking = sorted({case for name in HELD_OUT for case in split.get(name, [])} - set(referenced))
    if lacking:
        raise UserError(
            f"{source}: case(s) without a reference mask in val, meta or test: {', '.join(lacking[:5])}; "
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
    val: int | None = None,
) -> Split:
    """Resolve ``--split`` (``paper``, ``random`` or a file path) against the ``available`` case ids.

    ``referenced``: the ids with a reference mask (default: all), the only ones val, meta and test may
    hold; ``meta``, ``test``: the counts of a random split (``--meta``, ``--test``; random split only);
    ``val``: the val count of a random or paper split (``--val``; default :func:`default_val_count` for
    random, 0 for paper; a split file lists its own).
    """
    if (meta is not None or test is not None) and spec != "random":
        raise UserError(f"--meta/--test set the counts of --split random; --split {spec} fixes its own")
    if val is not None and spec not in ("random", "paper"):
        raise UserError(f"--val sets the val count of --split random or paper; {spec} lists its own val")
    referenced = sorted(available) if referenced is None else referenced
    if spec == "random":
        split = random_split(available, seed, referenced=referenced, meta=meta, test=test)
        return hold_out_val(split, seed, referenced=referenced, count=val)
    if spec == "paper":
        split = paper_split(available)
        _check_references(split, referenced, "--split paper")
        return hold_out_val(split, seed, referenced=referenced, count=val or 0)
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"--split {spec}: expected 'paper', 'random' or a YAML/JSON split file; no such file")
    split = file_split(path, available)
    _check_references(split, referenced, str(path))
    return split
