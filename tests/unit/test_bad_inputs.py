"""Bad input a user writes stops with an error naming the file or key, the field and the problem,
before any model is loaded: the two trials of issue 25 and every case decided since (the tables
of docs/bad_inputs.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from promptcl.dag.plan import WorkflowPlan
from promptcl.errors import ConfigError
from promptcl.tasks.files import TaskFormatError, TaskSource, read_split, resolve_task
from promptcl.tasks.tables import build_task_tables, prompt_parts
from tests.helpers import REPO

CAPS = {"train": {"n": 8}, "dev": {"n": 2}, "test": {"n": 4}}


def config_with(**sections) -> dict:
    """The demo config with some sections replaced or updated, validated (defaults filled)."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    validate(config, str(REPO / "config/schema.yaml"))
    return config


def plan_error(**sections) -> str:
    with pytest.raises(ConfigError) as err:
        WorkflowPlan.from_config(config_with(**sections), REPO)
    return str(err.value)


def user_task(root: Path, name: str = "task1_user", fmt: str = "sentence_label", **files) -> Path:
    """A task folder outside the repository; ``files`` are name -> JSON content."""
    defaults = {
        "train.json": [{"sentence": f"s{i}", "label": "yes"} for i in range(3)],
        "test.json": [{"sentence": "t", "label": "no"}],
        "instructions.json": {"instruction": "Say yes or no.", "labels": ["yes", "no"]},
    }
    if fmt == "superni":
        defaults = {
            s: {"Definition": ["Answer."], "Instances": [{"input": "q", "output": ["a"]}]}
            for s in ("train.json", "test.json")
        }
    folder = root / name
    folder.mkdir(parents=True)
    for file, content in {**defaults, **files}.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (folder / file).write_text(text)
    return folder


def tables_of(root: Path, fmt: str = "sentence_label", caps=CAPS):
    files = resolve_task("task1", [TaskSource(fmt, root)])
    return build_task_tables(files, caps)


# --- the two trials of the issue ----------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_trial_1_a_zero_cap_on_a_needed_split_is_refused_while_the_dag_is_built(split):
    message = plan_error(data={"caps": {**CAPS, split: {"n": 0}}})
    assert message.startswith(f"data.caps.{split}.n: 0 keeps no {split} instance")


def test_a_zero_dev_cap_is_allowed_the_dev_split_is_unused():
    plan = WorkflowPlan.from_config(config_with(data={"caps": {**CAPS, "dev": {"n": 0}}}), REPO)
    assert plan.runs


def test_trial_2_a_task_whose_train_file_is_empty_stops_in_prepare_tasks(tmp_path):
    folder = user_task(tmp_path, **{"train.json": []})
    with pytest.raises(TaskFormatError) as err:
        tables_of(tmp_path)
    assert (
        str(err.value)
        == f"{folder / 'train.json'}: split 'train' of task task1_user has no records"
    )


def test_a_cap_that_empties_a_split_names_the_cap_even_outside_the_workflow(tmp_path):
    user_task(tmp_path)
    with pytest.raises(TaskFormatError, match=r"data.caps.test.n: 0 leaves split 'test'"):
        tables_of(tmp_path, caps={**CAPS, "test": {"n": 0}})


def test_paraphrasing_a_task_without_a_prompt_names_its_table_and_the_rerun():
    with pytest.raises(
        TaskFormatError, match=r"task.json: no instruction .*forcerun prepare_tasks"
    ):
        prompt_parts({"task_id": "task1", "splits": {}}, "results/tasks/task1/task.json")
    assert prompt_parts({"instruction": "i", "labels": ["a"]}, "x") == ("i", ["a"])


# --- task files: decided cases ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "file", "expected"),
    [
        ({"train.json": [{"sentence": "s", "label": " "}]}, "train.json",
         "record 0: field 'label' is empty"),
        ({"test.json": [{"sentence": "s", "label": "maybe"}]}, "test.json",
         "record 0: field 'label' 'maybe' is not one of the task's labels ['yes', 'no']"),
        ({"instructions.json": {"instruction": "  ", "labels": []}}, "instructions.json",
         "field 'instruction' is empty"),
        ({"instructions.json": {"instruction": "i", "labels": ["yes", "?"]}}, "instructions.json",
         "field 'labels': entry 1 ('?') is empty"),
        ({"instructions.json": {"labels": ["yes", "no"]}}, "instructions.json",
         "field 'instruction' is missing"),
        ({"train.json": '[{"sentence": "\\ud800", "label": "yes"}]'}, "train.json",
         "record 0: field 'input' is not valid Unicode text"),
    ],
)  # fmt: skip
def test_sentence_label_task_problems_name_file_record_and_field(tmp_path, files, file, expected):
    folder = user_task(tmp_path, **files)
    with pytest.raises(TaskFormatError) as err:
        tables_of(tmp_path)
    assert str(folder / file) in str(err.value) and expected in str(err.value)


@pytest.mark.parametrize(
    ("instances", "definition", "expected"),
    [
        ([{"input": "q", "output": ""}], ["Answer."], "record 0: field 'output' holds an empty"),
        ([{"input": "q", "output": ["a", ""]}], ["Answer."], "field 'output' holds an empty"),
        ([{"input": "q", "output": "a"}], [" "], "field 'Definition' is empty"),
        ([{"input": "q", "output": "a"}], "", "field 'Definition' is empty"),
    ],
)
def test_superni_task_problems_name_file_record_and_field(
    tmp_path, instances, definition, expected
):
    task = {"Definition": definition, "Instances": instances}
    folder = user_task(tmp_path, fmt="superni", **{"train.json": task})
    with pytest.raises(TaskFormatError) as err:
        tables_of(tmp_path, "superni")
    assert str(folder / "train.json") in str(err.value) and expected in str(err.value)


def test_accepted_a_task_without_labels_is_a_generation_task_and_inputs_may_be_empty(tmp_path):
    user_task(
        tmp_path,
        **{
            "instructions.json": {"instruction": "Repeat the word."},  # no suffix, no labels
            "train.json": [{"sentence": "", "label": "word"}],
        },
    )
    tables, meta = tables_of(tmp_path)
    assert meta["labels"] == [] and meta["suffix"] == ""
    assert meta["splits"]["train"]["majority_rate"] is None
    assert tables["train"]["input"].tolist() == [""]


def test_accepted_answers_match_labels_as_the_metrics_compare_them(tmp_path):
    user_task(tmp_path, **{"train.json": [{"sentence": "s", "label": "Yes!"}]})
    tables, _ = tables_of(tmp_path)
    assert tables["train"]["references"].tolist() == [["Yes!"]]


# --- config values the schema allows ------------------------------------------------------------


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"prompts": {"candidates": 4, "min_valid": 5}},
         "prompts.min_valid: 5 valid paraphrases can never be reached"),
        ({"prompts": {"candidates": 6, "min_valid": 5}, "evaluation": {"heldout_prompts": 2}},
         "minus evaluation.heldout_prompts 2 leaves at most 4"),
        ({"prompts": {"validation": {"min_chars": 50, "max_chars": 40}}},
         "prompts.validation.min_chars: 50 exceeds max_chars 40"),
        ({"prompts": {"validation": {"min_length_ratio": 2.0, "max_length_ratio": 1.5}}},
         "prompts.validation.min_length_ratio: 2.0 exceeds max_length_ratio 1.5"),
        ({"runs": {"sequences": ["demo"], "prompt_strategies": ["fixed:9"]}},
         "runs.prompt_strategies: fixed:9 (run demo-inclora-fixed_9-s0) names candidate 9, but "
         "prompts.candidates 8"),
        ({"prompt": {"template": "{instruction} {question}"}},
         "prompt.template: fields must be among"),
        ({"training": {"max_steps": 0}}, "training.max_steps: 0"),
        ({"model": {"source": "local", "path": "/nonexistent/model"}},
         "model.path: folder /nonexistent/model does not exist"),
        ({"model": {"source": "local", "path": str(REPO / "resources")}},
         f"model.path: {REPO / 'resources'} is not a Hugging Face model folder"),
    ],
)  # fmt: skip
def test_config_values_that_cannot_work_are_refused_naming_the_key(sections, expected):
    assert expected in plan_error(**sections)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("Paraphrase {instruction} between {open} and {close", "expected '}' before end"),
        ("Paraphrase {instruction} in {language}.", "found ['instruction', 'language']"),
        ("Paraphrase {instruction}.", "neither uses {open} and {close} nor writes the delimiters"),
    ],
)
def test_a_request_template_that_cannot_work_stops_before_any_request(tmp_path, content, expected):
    template = tmp_path / "request.txt"
    template.write_text(content)
    message = plan_error(prompts={"backend": "local", "request_template": str(template)})
    assert message.startswith(f"prompts.request_template: {template}") and expected in message


def test_a_request_template_writing_the_delimiters_out_is_accepted(tmp_path):
    template = tmp_path / "request.txt"
    template.write_text("Rewrite {instruction}; reply <instruction>...</instruction>.")
    config = config_with(prompts={"backend": "local", "request_template": str(template)})
    assert WorkflowPlan.from_config(config, REPO).prompt_tasks


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("pool.json", '["a", ', "invalid JSON"),
        ("pool.json", '{"other_task": ["a"]}', "no pool named ['task195'"),
        ("pool.json", '{"task195": "one text"}', "pool 'task195' must be a list of texts"),
        ("pool.json", "7", "expected a list of texts"),
        ("pool.jsonl", '{"text": "a"}\n{"text": ', "line 2: invalid JSON"),
        ("pool.csv", "a,b\n1,2\n", "expected a 'text' column"),
        ("pool.csv", "", "cannot be read as a table"),
        ("pool.parquet", "not parquet", "cannot be read as a table"),
        ("pool.json", '[{"txt": "a"}]', "entry 0 is not a string"),
        ("pool.txt", "a", "unsupported pool format"),
    ],
)
def test_a_malformed_pool_stops_while_the_dag_is_built(tmp_path, name, content, expected):
    pool = tmp_path / name
    pool.write_text(content)
    message = plan_error(
        prompts={"file": {"path": str(pool)}}, sequences={"demo": {"tasks": ["task195"]}}
    )
    assert message.startswith("prompts.file.path: task ") and str(pool) in message
    assert expected in message


def test_a_broken_shared_instructions_file_stops_while_the_dag_is_built(tmp_path):
    user_task(tmp_path, **{"instructions.json": "{}"})
    (tmp_path / "task1_user" / "instructions.json").unlink()
    (tmp_path / "instructions.json").write_text('{"task1_user": {"instruction": "i"')
    config = {
        "data": {"sources": [{"format": "sentence_label", "root": str(tmp_path)}]},
        "sequences": {"demo": {"tasks": ["task1"]}},
    }
    message = plan_error(**config)
    assert message.startswith("task 'task1': ") and str(tmp_path / "instructions.json") in message
    assert "invalid JSON" in message


def test_a_good_task_reads_the_same_through_both_readers(tmp_path):
    """The checks refuse only what is wrong: a valid user task still reads."""
    user_task(tmp_path)
    files = resolve_task("task1", [TaskSource("sentence_label", tmp_path)])
    assert read_split(files, "train")["references"].tolist() == [["yes"]] * 3


def test_a_pool_too_small_for_min_valid_stops_while_the_dag_is_built(tmp_path):
    pool = tmp_path / "pool.json"
    pool.write_text('["Say yes or no.", "Answer yes or no."]')
    message = plan_error(
        prompts={"file": {"path": str(pool)}, "candidates": 8, "min_valid": 5},
        sequences={"demo": {"tasks": ["task195"]}},
    )
    assert message == (
        f"prompts.file.path: task task195: {pool} holds 2 text(s): with prompts.candidates 8 "
        "and evaluation.heldout_prompts 0 at most 2 can be valid, fewer than prompts.min_valid 5"
    )
    pool.write_text(json.dumps([f"Say yes or no, {i}." for i in range(5)]))
    config = config_with(
        prompts={"file": {"path": str(pool)}, "candidates": 8, "min_valid": 5},
        sequences={"demo": {"tasks": ["task195"]}},
    )
    assert WorkflowPlan.from_config(config, REPO).prompt_tasks
