"""The three split modes: the published PROMISE12 split, seeded random proportions, and split files."""

import functools
import json
import operator

import pytest

from mlbseg.errors import UserError
from mlbseg.prep.splits import make_split

PROMISE = [f"Case{i:02d}" for i in range(50)]


def test_paper_split_is_the_published_one():
    split = make_split("paper", [*PROMISE, "Case50"], seed=0)
    assert split["meta"] == ["Case05", "Case14", "Case29"]
    assert split["test"] == sorted(
        ["Case16", "Case35", "Case34", "Case49", "Case23", "Case12", "Case28", "Case43", "Case20", "Case13"]
    )
    assert len(split["train"]) == 37
    assert "Case45" in split["train"]
    assert "Case50" not in split["train"]
    assert set().union(*map(set, split.values())) == set(PROMISE)


def test_paper_split_needs_all_promise12_cases():
    with pytest.raises(UserError, match="needs PROMISE12 cases Case00–Case49; missing 2: Case07, Case31"):
        make_split("paper", [case for case in PROMISE if case not in ("Case07", "Case31")], seed=0)


@pytest.mark.parametrize(
    ("count", "sizes"), [(50, (37, 3, 10)), (3, (1, 1, 1)), (6, (4, 1, 1)), (100, (74, 6, 20))]
)
def test_random_split_proportions(count, sizes):
    ids = [f"p{i:03d}" for i in range(count)]
    split = make_split("random", ids, seed=4)
    assert tuple(len(split[name]) for name in ("train", "meta", "test")) == sizes
    assert sorted(functools.reduce(operator.iadd, split.values(), [])) == ids


def test_random_split_is_seeded_and_independent_of_listing_order():
    first = make_split("random", PROMISE, seed=1)
    assert make_split("random", PROMISE[::-1], seed=1) == first
    assert make_split("random", PROMISE, seed=2) != first
    with pytest.raises(UserError, match="at least 3 cases"):
        make_split("random", ["a", "b"], seed=0)


def test_split_files_in_yaml_and_json(tmp_path):
    (tmp_path / "s.yaml").write_text("train: [c2, c0]\nmeta: [c1]\ntest:\n  - c3\n")
    assert make_split(str(tmp_path / "s.yaml"), ["c0", "c1", "c2", "c3", "c4"], seed=0) == {
        "train": ["c0", "c2"],
        "meta": ["c1"],
        "test": ["c3"],
    }
    (tmp_path / "s.json").write_text(json.dumps({"train": ["c0"], "meta": ["c1"], "test": ["c2"]}))
    assert make_split(str(tmp_path / "s.json"), ["c0", "c1", "c2"], seed=0)["test"] == ["c2"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"train": ["c0", "c9"], "meta": ["c1"], "test": ["c2"]}, "unknown case id.*c9"),
        ({"train": ["c0", "c1"], "meta": ["c1"], "test": ["c2"]}, "more than once.*c1"),
        ({"train": ["c0"], "meta": [], "test": ["c2"]}, "'meta' must be a non-empty list"),
        ({"train": ["c0"], "test": ["c2"]}, "'meta' must be a non-empty list"),
        ({"train": ["c0"], "meta": ["c1"], "test": ["c2"], "val": ["c3"]}, "unknown key.*val"),
        (["c0", "c1"], "expected a mapping"),
    ],
)
def test_bad_split_files(tmp_path, content, match):
    path = tmp_path / "split.json"
    path.write_text(json.dumps(content))
    with pytest.raises(UserError, match=match):
        make_split(str(path), ["c0", "c1", "c2", "c3"], seed=0)


def test_unreadable_or_missing_split_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("train: [c0\n")
    with pytest.raises(UserError, match=r"bad\.yaml: cannot read the split file"):
        make_split(str(tmp_path / "bad.yaml"), ["c0"], seed=0)
    with pytest.raises(UserError, match="expected 'paper', 'random' or a YAML/JSON split file"):
        make_split("papr", ["c0"], seed=0)


@pytest.mark.parametrize("case_id", ["../c0", "..", ".", "", "/abs/c0", "sub/c0", "sub\\c0", "c\x000"])
@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_split_files_refuse_ids_that_escape_their_folder(tmp_path, case_id, suffix):
    path = tmp_path / f"split{suffix}"
    path.write_text(json.dumps({"train": ["c0"], "meta": ["c1"], "test": ["c2", case_id]}))  # JSON is YAML
    with pytest.raises(UserError) as error:
        make_split(str(path), ["c0", "c1", "c2", case_id], seed=0)  # even if such a case were available
    message = str(error.value)
    assert message.startswith(f"{path}: case id {case_id!r} is not a plain file name")
    assert "\n" not in message
