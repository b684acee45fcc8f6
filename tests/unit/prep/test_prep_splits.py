"""The three split modes (the published PROMISE12 split, seeded random proportions, split files) and val."""

import functools
import json
import operator

import pytest

from mlbseg.errors import UserError
from mlbseg.prep.splits import default_val_count, make_split

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
    ("count", "sizes"),
    [
        (50, (33, 4, 3, 10)),
        (3, (1, 0, 1, 1)),
        (6, (4, 0, 1, 1)),
        (13, (9, 0, 1, 3)),
        (14, (9, 1, 1, 3)),
        (100, (67, 7, 6, 20)),
    ],
)
def test_random_split_proportions(count, sizes):
    ids = [f"p{i:03d}" for i in range(count)]
    split = make_split("random", ids, seed=4)
    assert list(split) == ["train", "val", "meta", "test"]
    assert tuple(len(split[name]) for name in ("train", "val", "meta", "test")) == sizes
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
        "val": [],
        "meta": ["c1"],
        "test": ["c3"],
    }
    (tmp_path / "s.json").write_text(
        json.dumps({"train": ["c0"], "meta": ["c1"], "test": ["c2"], "val": ["c4", "c3"]})
    )
    split = make_split(str(tmp_path / "s.json"), ["c0", "c1", "c2", "c3", "c4"], seed=0)
    assert split == {"train": ["c0"], "val": ["c3", "c4"], "meta": ["c1"], "test": ["c2"]}
    (tmp_path / "empty_val.yaml").write_text("train: [c0]\nmeta: [c1]\ntest: [c2]\nval: []\n")
    assert make_split(str(tmp_path / "empty_val.yaml"), ["c0", "c1", "c2"], seed=0)["val"] == []


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"train": ["c0", "c9"], "meta": ["c1"], "test": ["c2"]}, "unknown case id.*c9"),
        ({"train": ["c0", "c1"], "meta": ["c1"], "test": ["c2"]}, "more than once.*c1"),
        ({"train": ["c0"], "meta": [], "test": ["c2"]}, "'meta' must be a non-empty list"),
        ({"train": ["c0"], "test": ["c2"]}, "'meta' must be a non-empty list"),
        ({"train": ["c0"], "meta": ["c1"], "test": ["c2"], "valid": ["c3"]}, "unknown key.*valid"),
        ({"train": ["c0"], "meta": ["c1"], "test": ["c2"], "val": "c3"}, "'val' must be a list of case ids"),
        ({"train": ["c0", "c3"], "meta": ["c1"], "test": ["c2"], "val": ["c3"]}, "more than once.*c3"),
        ({"train": ["c0"], "meta": ["c1"], "test": ["c2"], "val": ["c3", "c3"]}, "more than once.*c3"),
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


def test_default_val_count_is_a_tenth_from_ten_cases_on():
    assert [default_val_count(n) for n in (0, 9, 10, 14, 15, 24, 25, 37, 100)] == [0, 0, 1, 1, 2, 2, 3, 4, 10]


def test_val_comes_from_train_and_leaves_meta_and_test_as_without_val():
    ids = [f"p{i:03d}" for i in range(40)]
    referenced = ids[::2]  # val needs a reference, like meta and test
    without = make_split("random", ids, seed=3, referenced=referenced, val=0)
    assert without["val"] == []
    split = make_split("random", ids, seed=3, referenced=referenced)
    assert (split["meta"], split["test"]) == (without["meta"], without["test"])
    assert len(split["val"]) == default_val_count(len(set(without["train"]) & set(referenced))) == 2
    five = make_split("random", ids, seed=3, referenced=referenced, val=5)
    assert len(five["val"]) == 5
    assert set(five["val"]) <= set(without["train"]) & set(referenced)
    assert sorted(five["train"] + five["val"]) == without["train"]
    assert make_split("random", ids[::-1], seed=3, referenced=referenced, val=5) == five
    assert make_split("random", ids, seed=4, referenced=referenced, val=5)["val"] != five["val"]


def test_paper_split_has_no_val_unless_asked_and_keeps_meta_and_test():
    paper = make_split("paper", PROMISE, seed=0)
    assert paper["val"] == []
    split = make_split("paper", PROMISE, seed=0, val=4)
    assert (split["meta"], split["test"]) == (paper["meta"], paper["test"])
    assert len(split["val"]) == 4
    assert len(split["train"]) == 33
    assert sorted(split["train"] + split["val"]) == paper["train"]
    assert make_split("paper", PROMISE, seed=1, val=4)["val"] != split["val"]


@pytest.mark.parametrize(
    ("spec", "options", "match"),
    [
        ("random", {"val": 6}, r"^--val 6: only 5 train case\(s\) have a reference mask \(val needs one\)"),
        ("random", {"val": 5}, "at least one of the 5 train cases must be left to train"),
        ("random", {"val": -1}, "--val -1: expected a count >= 0"),
        ("paper", {"val": 38}, "--val 38: only 37 train case"),
        ("paper", {"val": 37}, "at least one of the 37 train cases must be left to train"),
        (
            "split.yaml",
            {"val": 1},
            "--val sets the val count of --split random or paper; .*lists its own val",
        ),
    ],
)
def test_impossible_val_counts(tmp_path, spec, options, match):
    ids = PROMISE if spec == "paper" else [f"p{i}" for i in range(8)]
    if spec == "split.yaml":
        spec = str(tmp_path / spec)
        (tmp_path / "split.yaml").write_text("train: [p0]\nmeta: [p1]\ntest: [p2]\n")
    with pytest.raises(UserError, match=match) as error:
        make_split(spec, ids, seed=0, **options)
    assert "\n" not in str(error.value)


def test_val_cases_need_a_reference(tmp_path):
    path = tmp_path / "split.yaml"
    path.write_text("train: [c0]\nmeta: [c1]\ntest: [c2]\nval: [c3]\n")
    with pytest.raises(UserError, match=r"split\.yaml: case\(s\) without a reference mask in val.*: c3"):
        make_split(str(path), ["c0", "c1", "c2", "c3"], seed=0, referenced=["c1", "c2"])
    split = make_split(
        "random", [f"c{i}" for i in range(30)], seed=0, referenced=[f"c{i}" for i in range(12)]
    )
    assert set(split["val"]) <= {f"c{i}" for i in range(12)}
