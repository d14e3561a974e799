"""Tests for the task readers: both formats, both instruction layouts, caps and error messages."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from promptcl.analysis.metrics import majority_rate
from promptcl.tasks.files import (
    SPLITS,
    TABLE_COLUMNS,
    TaskFiles,
    TaskFormatError,
    TaskNotFoundError,
    TaskSource,
    read_split,
    resolve_task,
)
from promptcl.tasks.tables import apply_cap
from tests.helpers import REPO

BUNDLED = REPO / "resources" / "tasks"

SENTENCE_LABEL_TASK = "task100_toy_classification"
SUPERNI_TASK = "task200_toy_answer_generation"


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    return path


def sentence_label_records(n: int, labels: tuple[str, ...] = ("yes", "no")) -> list[dict[str, str]]:
    return [{"sentence": f"sentence {i}", "label": labels[i % len(labels)]} for i in range(n)]


def make_sentence_label(
    root: Path, name: str = SENTENCE_LABEL_TASK, layout: str = "shared", n: int = 6
) -> Path:
    """A task in the sentence_label layout (the SAPO repository's); ``layout`` says where its
    instructions live."""
    for split in SPLITS:
        write_json(root / name / f"{split}.json", sentence_label_records(n))
    entry = {
        "instruction": "Answer yes or no.",
        "suffix": "Only yes or no.",
        "labels": ["yes", "no"],
    }
    if layout == "shared":
        write_json(root / "instructions.json", {name: {**entry, "size": [n, n, n]}})
    elif layout == "own":
        write_json(root / name / "instructions.json", entry)
    return root / name


def superni_task(n: int, output_kind: str = "list", **extra: Any) -> dict[str, Any]:
    def output(i: int) -> Any:
        return f"answer {i}" if output_kind == "str" else [f"answer {i}", f"alt {i}"]

    task: dict[str, Any] = {
        "Contributors": ["someone"],
        "Definition": ["Answer the question."],
        "Positive Examples": [],
        "Negative Examples": [],
        "Instances": [
            {"id": f"task200-{i}", "input": f"question {i}", "output": output(i)} for i in range(n)
        ],
        "Instance License": ["CC BY 4.0"],
    }
    task.update(extra)
    return task


def make_superni(root: Path, name: str = SUPERNI_TASK, output_kind: str = "list", n: int = 4):
    for split in SPLITS:
        write_json(root / name / f"{split}.json", superni_task(n, output_kind))
    return root / name


def sentence_label_files(tmp_path: Path, **kwargs: Any) -> TaskFiles:
    make_sentence_label(tmp_path / "sentence_label", **kwargs)
    return resolve_task("task100", [TaskSource("sentence_label", tmp_path / "sentence_label")])


def superni_files(tmp_path: Path, **kwargs: Any) -> TaskFiles:
    make_superni(tmp_path / "ni", **kwargs)
    return resolve_task("task200", [TaskSource("superni", tmp_path / "ni")])


# --------------------------------------------------------------------------- resolving


def test_resolve_short_and_full_id(tmp_path: Path) -> None:
    make_sentence_label(tmp_path / "sentence_label")
    sources = [TaskSource("sentence_label", tmp_path / "sentence_label")]
    short = resolve_task("task100", sources)
    full = resolve_task(SENTENCE_LABEL_TASK, sources)
    assert short.full_name == full.full_name == SENTENCE_LABEL_TASK
    assert short.task_id == "task100" and full.task_id == SENTENCE_LABEL_TASK
    assert short.format == "sentence_label"
    assert short.directory == tmp_path / "sentence_label" / SENTENCE_LABEL_TASK
    assert short.splits == {
        s: tmp_path / "sentence_label" / SENTENCE_LABEL_TASK / f"{s}.json" for s in SPLITS
    }
    assert short.instructions == tmp_path / "sentence_label" / "instructions.json"
    hash(short)  # usable as a dict key despite the splits dict


def test_resolve_does_not_match_longer_numbers(tmp_path: Path) -> None:
    """'task10' must not match 'task100_...': only '<id>' or '<id>_' prefixes count."""
    make_sentence_label(tmp_path / "sentence_label")
    with pytest.raises(TaskNotFoundError, match="task10"):
        resolve_task("task10", [TaskSource("sentence_label", tmp_path / "sentence_label")])


def test_resolve_only_existing_splits(tmp_path: Path) -> None:
    task_dir = make_sentence_label(tmp_path / "sentence_label")
    (task_dir / "train.json").unlink()
    files = resolve_task("task100", [TaskSource("sentence_label", tmp_path / "sentence_label")])
    assert sorted(files.splits) == ["dev", "test"]


def test_resolve_across_sources(tmp_path: Path) -> None:
    make_sentence_label(tmp_path / "sentence_label")
    make_superni(tmp_path / "ni")
    sources = [
        TaskSource("sentence_label", tmp_path / "sentence_label"),
        TaskSource("superni", tmp_path / "ni"),
    ]
    assert resolve_task("task200", sources).format == "superni"
    assert resolve_task("task100", sources).format == "sentence_label"


def test_resolve_not_found_names_id_and_roots(tmp_path: Path) -> None:
    make_sentence_label(tmp_path / "sentence_label")
    sources = [
        TaskSource("sentence_label", tmp_path / "sentence_label"),
        TaskSource("superni", tmp_path / "nope"),
    ]
    with pytest.raises(TaskNotFoundError) as err:
        resolve_task("task999", sources)
    msg = str(err.value)
    assert "task999" in msg
    assert str(tmp_path / "sentence_label") in msg
    assert str(tmp_path / "nope") in msg and "missing" in msg


def test_resolve_ambiguous_lists_all_matches(tmp_path: Path) -> None:
    make_sentence_label(tmp_path / "sentence_label", name="task100_a")
    make_superni(tmp_path / "ni", name="task100_b")
    sources = [
        TaskSource("sentence_label", tmp_path / "sentence_label"),
        TaskSource("superni", tmp_path / "ni"),
    ]
    with pytest.raises(TaskNotFoundError) as err:
        resolve_task("task100", sources)
    msg = str(err.value)
    assert "ambiguous" in msg and "task100_a" in msg and "task100_b" in msg


def test_resolve_exact_name_wins_over_prefix(tmp_path: Path) -> None:
    root = tmp_path / "sentence_label"
    make_sentence_label(root, name="task1_x")
    for split in SPLITS:
        write_json(root / "task1_x_ori" / f"{split}.json", sentence_label_records(2))
    write_json(root / "task1_x_ori" / "instructions.json", {"instruction": "i"})
    sources = [TaskSource("sentence_label", root)]
    assert resolve_task("task1_x", sources).full_name == "task1_x"
    with pytest.raises(TaskNotFoundError, match="ambiguous"):
        resolve_task("task1", sources)


def test_sapo_without_instructions_names_expected_paths(tmp_path: Path) -> None:
    make_sentence_label(tmp_path / "sentence_label", layout="none")
    with pytest.raises(TaskFormatError) as err:
        resolve_task("task100", [TaskSource("sentence_label", tmp_path / "sentence_label")])
    msg = str(err.value)
    assert str(tmp_path / "sentence_label" / "instructions.json") in msg
    assert str(tmp_path / "sentence_label" / SENTENCE_LABEL_TASK / "instructions.json") in msg


def test_sapo_shared_instructions_without_entry(tmp_path: Path) -> None:
    make_sentence_label(tmp_path / "sentence_label", layout="none")
    write_json(
        tmp_path / "sentence_label" / "instructions.json", {"task999_other": {"instruction": "x"}}
    )
    with pytest.raises(TaskFormatError, match=SENTENCE_LABEL_TASK):
        resolve_task("task100", [TaskSource("sentence_label", tmp_path / "sentence_label")])


def test_invalid_shared_instructions_json_names_file(tmp_path: Path) -> None:
    make_sentence_label(tmp_path / "sentence_label", layout="none")
    (tmp_path / "sentence_label" / "instructions.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(TaskFormatError, match="instructions.json"):
        resolve_task("task100", [TaskSource("sentence_label", tmp_path / "sentence_label")])


def test_task_source_rejects_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format"):
        TaskSource("csv", tmp_path)


# --------------------------------------------------------------------------- reading sapo


@pytest.mark.parametrize("layout", ["shared", "own"])
def test_read_sapo(tmp_path: Path, layout: str) -> None:
    files = sentence_label_files(tmp_path, layout=layout)
    if layout == "own":
        assert files.instructions == files.directory / "instructions.json"
    df = read_split(files, "dev")
    assert list(df.columns) == TABLE_COLUMNS
    assert len(df) == 6
    assert df["id"].tolist() == [f"{SENTENCE_LABEL_TASK}-dev-{i}" for i in range(6)]
    assert df["id"].is_unique
    assert df["input"].tolist()[:2] == ["sentence 0", "sentence 1"]
    assert df["references"].tolist()[:2] == [["yes"], ["no"]]
    assert set(df["instruction"]) == {"Answer yes or no."}
    assert set(df["suffix"]) == {"Only yes or no."}
    assert all(lbls == ["yes", "no"] for lbls in df["labels"])


def test_read_sapo_missing_suffix_and_labels_default(tmp_path: Path) -> None:
    task_dir = make_sentence_label(tmp_path / "sentence_label", layout="none")
    write_json(task_dir / "instructions.json", {"instruction": "Summarise."})
    files = resolve_task("task100", [TaskSource("sentence_label", tmp_path / "sentence_label")])
    df = read_split(files, "train")
    assert set(df["suffix"]) == {""}
    assert all(lbls == [] for lbls in df["labels"])


def test_sapo_entry_without_instruction(tmp_path: Path) -> None:
    task_dir = make_sentence_label(tmp_path / "sentence_label", layout="none")
    path = write_json(task_dir / "instructions.json", {"suffix": "s", "labels": []})
    files = resolve_task("task100", [TaskSource("sentence_label", tmp_path / "sentence_label")])
    with pytest.raises(TaskFormatError) as err:
        read_split(files, "train")
    assert str(path) in str(err.value) and "'instruction'" in str(err.value)


def test_sapo_bad_labels_in_instructions(tmp_path: Path) -> None:
    files = sentence_label_files(tmp_path)
    write_json(files.instructions, {SENTENCE_LABEL_TASK: {"instruction": "i", "labels": "yes,no"}})
    with pytest.raises(TaskFormatError) as err:
        read_split(files, "train")
    assert str(files.instructions) in str(err.value) and "'labels'" in str(err.value)


def test_each_split_has_distinct_ids(tmp_path: Path) -> None:
    files = sentence_label_files(tmp_path)
    ids = [set(read_split(files, s)["id"]) for s in SPLITS]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2])


# --------------------------------------------------------------------------- reading superni


@pytest.mark.parametrize("output_kind", ["list", "str"])
def test_read_superni(tmp_path: Path, output_kind: str) -> None:
    files = superni_files(tmp_path, output_kind=output_kind)
    assert files.instructions is None
    df = read_split(files, "test")
    assert list(df.columns) == TABLE_COLUMNS
    assert df["id"].tolist() == [f"task200-{i}" for i in range(4)]
    assert df["input"].tolist()[0] == "question 0"
    expected = ["answer 0"] if output_kind == "str" else ["answer 0", "alt 0"]
    assert df["references"].tolist()[0] == expected
    assert set(df["instruction"]) == {"Answer the question."}
    assert set(df["suffix"]) == {""}
    assert all(lbls == [] for lbls in df["labels"])


def test_superni_definition_as_string(tmp_path: Path) -> None:
    files = superni_files(tmp_path)
    write_json(files.splits["dev"], superni_task(2, Definition="Plain definition."))
    assert set(read_split(files, "dev")["instruction"]) == {"Plain definition."}


def test_superni_shared_instructions_add_suffix_and_labels(tmp_path: Path) -> None:
    root = tmp_path / "ni"
    make_superni(root, output_kind="str")
    labels = [f"answer {i}" for i in range(4)]  # every gold answer is a label
    write_json(
        root / "instructions.json", {SUPERNI_TASK: {"suffix": "One word.", "labels": labels}}
    )
    files = resolve_task("task200", [TaskSource("superni", root)])
    assert files.instructions == root / "instructions.json"
    df = read_split(files, "train")
    assert set(df["instruction"]) == {"Answer the question."}  # Definition kept
    assert set(df["suffix"]) == {"One word."}
    assert all(lbls == labels for lbls in df["labels"])


def test_superni_instruction_override(tmp_path: Path) -> None:
    root = tmp_path / "ni"
    make_superni(root)
    write_json(root / SUPERNI_TASK / "instructions.json", {"instruction": "Mine.", "suffix": "S"})
    files = resolve_task("task200", [TaskSource("superni", root)])
    df = read_split(files, "train")
    assert set(df["instruction"]) == {"Mine."} and set(df["suffix"]) == {"S"}


def test_superni_shared_file_without_entry_is_optional(tmp_path: Path) -> None:
    root = tmp_path / "ni"
    make_superni(root)
    write_json(root / "instructions.json", {"task999_other": {"suffix": "x"}})
    assert resolve_task("task200", [TaskSource("superni", root)]).instructions is None


def test_superni_missing_id_gets_positional_id(tmp_path: Path) -> None:
    files = superni_files(tmp_path)
    task = superni_task(2)
    for inst in task["Instances"]:
        del inst["id"]
    write_json(files.splits["dev"], task)
    assert read_split(files, "dev")["id"].tolist() == [
        f"{SUPERNI_TASK}-dev-0",
        f"{SUPERNI_TASK}-dev-1",
    ]


# --------------------------------------------------------------------------- error paths


def assert_names(err: pytest.ExceptionInfo, path: Path, *parts: str) -> None:
    msg = str(err.value)
    assert str(path) in msg, msg
    for part in parts:
        assert part in msg, msg


def test_missing_split_file(tmp_path: Path) -> None:
    files = sentence_label_files(tmp_path)
    files.splits["test"].unlink()
    with pytest.raises(FileNotFoundError) as err:
        read_split(files, "test")
    assert_names(err, files.directory / "test.json")


def test_unknown_split_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        read_split(sentence_label_files(tmp_path), "validation")


@pytest.mark.parametrize("fmt", ["sapo", "superni"])
def test_invalid_json(tmp_path: Path, fmt: str) -> None:
    files = sentence_label_files(tmp_path) if fmt == "sapo" else superni_files(tmp_path)
    files.splits["train"].write_text('[{"sentence": "a",', encoding="utf-8")
    with pytest.raises(TaskFormatError) as err:
        read_split(files, "train")
    assert_names(err, files.splits["train"], "invalid JSON")


def test_undecodable_file(tmp_path: Path) -> None:
    files = sentence_label_files(tmp_path)
    files.splits["train"].write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TaskFormatError) as err:
        read_split(files, "train")
    assert_names(err, files.splits["train"])


@pytest.mark.parametrize(
    ("fmt", "content"),
    [("sapo", {"sentence": "a", "label": "b"}), ("superni", [{"input": "a", "output": ["b"]}])],
)
def test_wrong_top_level_type(tmp_path: Path, fmt: str, content: Any) -> None:
    files = sentence_label_files(tmp_path) if fmt == "sapo" else superni_files(tmp_path)
    write_json(files.splits["dev"], content)
    with pytest.raises(TaskFormatError) as err:
        read_split(files, "dev")
    assert_names(err, files.splits["dev"], "expected")


@pytest.mark.parametrize(
    ("record", "field", "problem"),
    [
        ({"label": "yes"}, "sentence", "missing"),
        ({"sentence": "s"}, "label", "missing"),
        ({"sentence": 3, "label": "yes"}, "sentence", "string"),
        ({"sentence": "s", "label": ["yes"]}, "label", "string"),
        ({"sentence": "s", "label": None}, "label", "string"),
    ],
)
def test_sapo_bad_record(tmp_path: Path, record: dict, field: str, problem: str) -> None:
    files = sentence_label_files(tmp_path)
    records = sentence_label_records(5)
    records[3] = record
    write_json(files.splits["train"], records)
    with pytest.raises(TaskFormatError) as err:
        read_split(files, "train")
    assert_names(err, files.splits["train"], "record 3", f"'{field}'", problem)


def test_sapo_record_not_an_object(tmp_path: Path) -> None:
    files = sentence_label_files(tmp_path)
    records: list[Any] = sentence_label_records(3)
    records[1] = "sentence"
    write_json(files.splits["train"], records)
    with pytest.raises(TaskFormatError) as err:
        read_split(files, "train")
    assert_names(err, files.splits["train"], "record 1")


@pytest.mark.parametrize(
    ("instance", "field", "problem"),
    [
        ({"id": "x", "output": ["b"]}, "input", "missing"),
        ({"id": "x", "input": "a"}, "output", "missing"),
        ({"id": "x", "input": None, "output": ["b"]}, "input", "string"),
        ({"id": "x", "input": "a", "output": []}, "output", "empty"),
        ({"id": "x", "input": "a", "output": ["b", 2]}, "output", "strings"),
        ({"id": "x", "input": "a", "output": 7}, "output", "string"),
        ({"id": 5, "input": "a", "output": "b"}, "id", "string"),
        ({"id": "task200-0", "input": "a", "output": "b"}, "id", "duplicates"),
    ],
)
def test_superni_bad_instance(tmp_path: Path, instance: dict, field: str, problem: str) -> None:
    files = superni_files(tmp_path)
    task = superni_task(4)
    task["Instances"][2] = instance
    write_json(files.splits["test"], task)
    with pytest.raises(TaskFormatError) as err:
        read_split(files, "test")
    assert_names(err, files.splits["test"], "record 2", f"'{field}'", problem)


def test_superni_missing_definition(tmp_path: Path) -> None:
    files = superni_files(tmp_path)
    task = superni_task(2)
    del task["Definition"]
    write_json(files.splits["dev"], task)
    with pytest.raises(TaskFormatError) as err:
        read_split(files, "dev")
    assert_names(err, files.splits["dev"], "'Definition'")


def test_superni_missing_instances(tmp_path: Path) -> None:
    files = superni_files(tmp_path)
    write_json(files.splits["dev"], {"Definition": ["d"]})
    with pytest.raises(TaskFormatError) as err:
        read_split(files, "dev")
    assert_names(err, files.splits["dev"], "Instances")


# --------------------------------------------------------------------------- caps


def toy_table(n: int) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"r{i}" for i in range(n)], "x": range(n)})


def test_apply_cap_unchanged() -> None:
    df = toy_table(5)
    assert apply_cap(df, None).equals(df)
    assert apply_cap(df, 5).equals(df)
    assert apply_cap(df, 50, mode="sample").equals(df)


def test_apply_cap_first() -> None:
    assert apply_cap(toy_table(10), 3)["id"].tolist() == ["r0", "r1", "r2"]
    assert len(apply_cap(toy_table(10), 0)) == 0


def test_apply_cap_sample_is_seeded_and_ordered() -> None:
    df = toy_table(50)
    a = apply_cap(df, 10, mode="sample", seed=1)
    b = apply_cap(df, 10, mode="sample", seed=1)
    c = apply_cap(df, 10, mode="sample", seed=2)
    assert a.equals(b)
    assert not a.equals(c)
    assert len(a) == 10 and a["id"].is_unique
    assert a["x"].is_monotonic_increasing  # original order kept
    assert a.index.tolist() == list(range(10))


@pytest.mark.parametrize(("n", "mode"), [(3, "random"), (-1, "first"), (2.5, "first")])
def test_apply_cap_rejects_bad_arguments(n: Any, mode: str) -> None:
    with pytest.raises(ValueError):
        apply_cap(toy_table(5), n, mode=mode)


def test_majority_rate() -> None:
    refs = [["a"], ["a", "x"], ["b"], ["a"]]
    assert majority_rate(refs, ["a", "b"]) == pytest.approx(75.0)
    assert math.isnan(majority_rate(refs, []))
    assert math.isnan(majority_rate([], ["a"]))


# --------------------------------------------------------------------------- bundled data


def bundled_sources() -> list[TaskSource]:
    return [
        TaskSource("sentence_label", BUNDLED / "sentence_label"),
        TaskSource("superni", BUNDLED / "superni"),
    ]


def bundled_task_names() -> list[str]:
    return sorted(d.name for src in bundled_sources() for d in src.root.iterdir() if d.is_dir())


def test_bundled_tasks_exist() -> None:
    assert len(bundled_task_names()) == 13


@pytest.mark.parametrize("name", bundled_task_names())
def test_bundled_task_reads(name: str) -> None:
    files = resolve_task(name.split("_")[0], bundled_sources())
    assert files.full_name == name
    assert sorted(files.splits) == sorted(SPLITS)
    for split in SPLITS:
        df = read_split(files, split)
        assert len(df) > 0, (name, split)
        assert df["id"].is_unique
        assert all(isinstance(x, str) and x for x in df["input"])
        labels = df["labels"].iloc[0]
        if labels:
            stray = {r for refs in df["references"] for r in refs} - set(labels)
            assert not stray, (name, split, stray)
            assert majority_rate(df["references"].tolist(), labels) < 100.0
