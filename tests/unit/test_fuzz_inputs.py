"""Property-based tests (Hypothesis) of the bad-input contract: whatever a user writes in a task
folder (both formats), an instructions file, a prompt pool, a request template or a config the
schema accepts either works or stops with the library's own error naming the file (or key):
never a bare IndexError, KeyError, TypeError, JSON or pandas error. When it works, what it made
is usable downstream (non-empty splits and answers, tables that write to parquet).

Inputs start valid and get none to three mutations each (a field dropped, retyped, emptied or made
a lone surrogate; an answer outside the label set; a file replaced by other JSON or by text that
is not JSON), so both sides of the contract are exercised: the statistics
(``pytest --hypothesis-show-statistics``) show how many examples were read and how many refused.
"""

from __future__ import annotations

import io
import json
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from promptcl.analysis.metrics import normalize_answer
from promptcl.dag.plan import WorkflowPlan
from promptcl.errors import ConfigError
from promptcl.prompts.paraphrase import TemplateError, load_request_template
from promptcl.prompts.pools import PoolFormatError, load_pool
from promptcl.prompts.prompting import PromptFormat
from promptcl.tasks.files import REQUIRED_SPLITS, SPLITS, TaskFormatError, TaskSource, resolve_task
from promptcl.tasks.tables import build_task_tables
from tests.helpers import REPO

#: reproducible and database-free (the same examples on every machine and in CI, nothing
#: written to .hypothesis/), no per-example deadline (a loaded CI machine is not a failure),
#: and sized so the whole module runs in about 15 s on one core
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
LABELS = ["yes", "no"]
#: strings that exercise the decided cases: empty, blank, off the label set, only punctuation,
#: a lone surrogate (valid JSON as an escape, not writable as UTF-8), a label with other case
SPECIAL = ["", " ", "maybe", "?", "\ud800", "YES!"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(SPECIAL))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=2), st.dictionaries(st.sampled_from(["a", "text"]), inner)
    ),
    max_leaves=4,
)
NOT_JSON = "[{'sentence': 1"


class Raw(str):
    """File content written as is (not JSON-encoded)."""


def dump(value) -> str:
    return value if isinstance(value, Raw) else json.dumps(value)


def mutate(draw, obj, paths: list[tuple]) -> None:
    """Replace, retype, empty or drop the value at one of ``paths`` (tuples of keys)."""
    path = draw(st.sampled_from(paths))
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    how = draw(st.sampled_from(["drop", "special", "special", "special", "json"]))
    if how == "drop" and isinstance(parent, dict):
        parent.pop(path[-1], None)
    elif how == "special":
        parent[path[-1]] = draw(st.sampled_from(SPECIAL))
    else:
        parent[path[-1]] = draw(json_values)


def mutations(draw, files: dict, records: list[tuple], prompt: list[tuple]) -> None:
    """None (a valid folder) to three: a field of a record or of the prompt parts mutated, a
    file replaced by other JSON or by text that is not JSON, or a split emptied."""
    kinds = ["record", "record", "record", "prompt", "file", "not json", "empty"]
    for _ in range(draw(st.sampled_from([0, 1, 1, 2, 2, 3]))):
        kind = draw(st.sampled_from(kinds))
        reachable = [p for p in (records if kind == "record" else prompt) if _reachable(files, p)]
        if kind in ("record", "prompt") and reachable:
            mutate(draw, files, reachable)
        elif kind == "file":
            files[draw(st.sampled_from(sorted(files)))] = draw(json_values)
        elif kind == "not json":
            files[draw(st.sampled_from(sorted(files)))] = Raw(NOT_JSON)
        elif kind == "empty":
            files[draw(st.sampled_from(["train.json", "test.json"]))] = []


@st.composite
def sentence_label_task(draw) -> dict:
    """{file name: content} of a task folder (its instructions in its own file or in the
    source's shared one), mutated."""

    def split(n_min: int) -> list:
        labels = draw(st.lists(st.sampled_from(LABELS), min_size=n_min, max_size=3))
        return [{"sentence": draw(st.text(max_size=4)), "label": label} for label in labels]

    entry = {"instruction": "Say yes or no.", "suffix": "Answer:"}
    if draw(st.booleans()):  # else a generation task
        entry["labels"] = list(LABELS)
    files = {"train.json": split(0), "test.json": split(1)}
    own = draw(st.booleans())
    files["instructions.json" if own else "../instructions.json"] = (
        entry if own else {"task1_x": entry}
    )
    where = ("instructions.json",) if own else ("../instructions.json", "task1_x")
    prompt = [(*where, k) for k in ("instruction", "suffix", "labels")] + [where]
    records = [(f, i, k) for f in ("train.json", "test.json") for i in range(3)
               for k in ("sentence", "label", "label")]  # fmt: skip
    records += [(f, i) for f in ("train.json", "test.json") for i in range(3)]
    mutations(draw, files, records, prompt)
    return files


@st.composite
def superni_task(draw) -> dict:
    """{file name: content} of a raw SuperNI task folder (an optional instructions file giving
    its label set), mutated."""

    def split(n_min: int) -> dict:
        answers = draw(st.lists(st.sampled_from(LABELS), min_size=n_min, max_size=3))
        instances = [
            {"id": f"i{i}", "input": draw(st.text(max_size=4)), "output": [answer]}
            for i, answer in enumerate(answers)
        ]
        return {"Definition": ["Answer yes or no."], "Instances": instances}

    files = {"train.json": split(0), "test.json": split(1)}
    if draw(st.booleans()):
        files["instructions.json"] = {"suffix": "Answer:", "labels": list(LABELS)}
    prompt = [("instructions.json", k) for k in ("instruction", "suffix", "labels")]
    records = []
    for f in ("train.json", "test.json"):
        prompt += [(f, "Definition"), (f, "Definition", 0)]
        records.append((f, "Instances"))
        for i in range(3):
            records += [(f, "Instances", i, k) for k in ("id", "input", "output")]
            records += [(f, "Instances", i), (f, "Instances", i, "output", 0)]
    mutations(draw, files, records, prompt)
    return files


def _reachable(obj, path: tuple) -> bool:
    """The value at ``path`` exists (a list index within the list, a key in the object)."""
    for key in path:
        if isinstance(obj, dict) and key in obj:
            obj = obj[key]
        elif isinstance(obj, list) and isinstance(key, int) and key < len(obj):
            obj = obj[key]
        else:
            return False
    return True


caps_strategy = st.fixed_dictionaries(
    {s: st.fixed_dictionaries({"n": st.sampled_from([None, None, 2, 1, 0])}) for s in SPLITS}
)


def check_task(root: Path, fmt: str, caps: dict) -> None:
    """The contract for one task folder: usable tables, or a TaskFormatError naming a file of
    the task (a split or an instructions file) or the cap that emptied a split."""
    named = [str(root / "instructions.json"), str(root / "task1_x" / "instructions.json")]
    named += [str(p) for p in root.rglob("*.json")]
    try:
        files = resolve_task("task1", [TaskSource(fmt, root)])
        tables, meta = build_task_tables(files, caps)
    except TaskFormatError as err:
        message = str(err)
        assert any(f in message for f in named) or "data.caps." in message, message
        event("refused")
        return
    event("read")
    for split in REQUIRED_SPLITS:
        assert len(tables[split]) > 0
    labels = {normalize_answer(lb) for lb in meta["labels"]}
    for table in tables.values():
        table.to_parquet(io.BytesIO())  # what prepare_tasks does next
        for refs in table["references"]:
            assert len(refs) and all(r.strip() for r in refs)
            assert not labels or normalize_answer(refs[0]) in labels
    assert meta["instruction"].strip()


def written_and_checked(files: dict, fmt: str, caps: dict) -> None:
    """The task folder written to a fresh source folder (its shared instructions file beside
    it), then :func:`check_task`."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "task1_x"
        folder.mkdir(parents=True)
        for name, content in files.items():
            (folder / name).write_text(dump(content), encoding="utf-8", errors="surrogatepass")
        check_task(Path(tmp), fmt, caps)


@FUZZ
@given(files=sentence_label_task(), caps=caps_strategy)
def test_any_sentence_label_task_folder_reads_or_names_its_file(files, caps):
    written_and_checked(files, "sentence_label", caps)


@FUZZ
@given(files=superni_task(), caps=caps_strategy)
def test_any_superni_task_folder_reads_or_names_its_file(files, caps):
    written_and_checked(files, "superni", caps)


POOL_TEXTS = st.lists(st.one_of(st.text(max_size=6), st.sampled_from(SPECIAL)), max_size=3)
pool_contents = st.one_of(
    POOL_TEXTS.map(json.dumps),
    POOL_TEXTS.map(lambda t: json.dumps([{"text": x} for x in t])),
    POOL_TEXTS.map(lambda t: json.dumps({"task1_x": t, "other": []})),
    POOL_TEXTS.map(lambda t: "\n".join(json.dumps({"text": x}) for x in t)),
    POOL_TEXTS.map(lambda t: "text\n" + "\n".join(json.dumps(x) for x in t)),
    json_values.map(json.dumps),
    st.sampled_from([NOT_JSON, "", "a,b\n1,2\n", '{"text": "a"}\n{"text"']),
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
)


@FUZZ
@given(content=pool_contents, suffix=st.sampled_from([".json", ".jsonl", ".csv", ".parquet", ""]))
def test_any_pool_file_loads_texts_or_names_itself(content, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"pool{suffix}"
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
        try:
            pool = load_pool(path, key=["task1", "task1_x"])
        except PoolFormatError as err:
            assert str(path) in str(err)
            event("refused")
            return
        event("loaded")
        for text in pool:
            assert isinstance(text, str)
            text.encode("utf-8")  # writable into the candidate table


BAD_PARTS = ["{", "}", "{x}", "{0}", "{instruction.x}", "{{", "}}", "{instruction!r}"]


@st.composite
def request_templates(draw) -> str:
    """Mostly plausible templates: the instruction, the delimiters as fields, written out or
    missing, the labels, and sometimes a stray or unknown brace."""
    parts = ["Rewrite {instruction}."] if draw(st.integers(0, 9)) else ["Rewrite it."]
    parts.append(draw(st.sampled_from(["", " Keep {labels}."])))
    delimiters = ["{open}...{close}", "{open}...{close}", "<instruction>...</instruction>", ""]
    parts.append(draw(st.sampled_from(delimiters)))
    parts += draw(st.lists(st.sampled_from(BAD_PARTS), max_size=1))
    return "".join(draw(st.permutations(parts)))


@FUZZ
@given(text=request_templates())
def test_any_request_template_loads_or_names_itself(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "request.txt"
        path.write_text(text)
        delimiters = ("<instruction>", "</instruction>")
        try:
            template = load_request_template(path, delimiters)
        except TemplateError as err:
            assert str(path) in str(err)
            event("refused")
            return
        event("loaded")
        request = template.format(instruction="INS", labels="none", open="<o>", close="</o>")
        assert "INS" in request
        assert ("<o>" in request and "</o>" in request) or all(d in request for d in delimiters)


BASE = yaml.safe_load((REPO / "config/config.yaml").read_text())
TASKS = ["task195", "task1310", "task363", "task1343", "task875"]
PROMPT_TEMPLATES = ["{instruction}\n\n{input}\n\n{suffix}", "{input}"] * 3 + [
    "{instruction}",
    "{input} {",
]
STRATEGIES = ["original", "sapo", "paft", "fixed:1", "fixed:9"]
#: the config's key first (or the task it is about): "data.caps.train.n: ..."
CONFIG_KEY = re.compile(r"^(task '[^']+'|[a-z_]+(\.[a-z_0-9\[\]]+)*): ")


@pytest.fixture(scope="module")
def schema(tmp_path_factory) -> str:
    """The schema as JSON: the same rules, read 20× faster than the YAML on every example."""
    path = tmp_path_factory.mktemp("schema") / "schema.json"
    path.write_text(json.dumps(yaml.safe_load((REPO / "config/schema.yaml").read_text())))
    return str(path)


@settings(FUZZ, max_examples=120)
@given(
    caps=st.fixed_dictionaries(
        {s: st.fixed_dictionaries({"n": st.sampled_from([None, 4, 4, 1, 0])}) for s in SPLITS}
    ),
    candidates=st.integers(1, 6),
    min_valid=st.integers(0, 5),
    heldout=st.sampled_from([0, 0, 1, 3]),
    chars=st.tuples(st.sampled_from([1, 20, 20, 50]), st.sampled_from([40, 2000])),
    ratios=st.tuples(st.sampled_from([0.0, 0.3, 0.3, 2.0]), st.sampled_from([1.5, 3.0])),
    template=st.sampled_from(PROMPT_TEMPLATES),
    tasks=st.one_of(
        st.lists(st.sampled_from(TASKS), min_size=1, max_size=3, unique=True),
        st.lists(st.sampled_from(TASKS), min_size=2, max_size=3),  # maybe repeated
    ),
    unseen=st.lists(st.sampled_from(TASKS), max_size=1),
    strategies=st.lists(st.sampled_from(STRATEGIES), min_size=1, max_size=2),
    max_steps=st.sampled_from([-1, -1, -1, 5, 5, 0, -2]),
)
def test_any_config_the_schema_accepts_plans_or_names_its_key(
    schema,
    caps,
    candidates,
    min_valid,
    heldout,
    chars,
    ratios,
    template,
    tasks,
    unseen,
    strategies,
    max_steps,
):
    config = json.loads(json.dumps(BASE))
    config["data"]["caps"] = caps
    validation = dict(zip(("min_chars", "max_chars"), chars, strict=True))
    validation.update(zip(("min_length_ratio", "max_length_ratio"), ratios, strict=True))
    config["prompts"].update(candidates=candidates, min_valid=min_valid, validation=validation)
    config["evaluation"] = {"heldout_prompts": heldout}
    config["prompt"]["template"] = template
    if unseen and unseen[0] in tasks and len(tasks) % 2:  # mostly a task not trained
        unseen = [t for t in TASKS if t not in tasks][:1]
    config["sequences"] = {"demo": {"tasks": tasks, "unseen": unseen}}
    config["runs"]["prompt_strategies"] = list(dict.fromkeys(strategies))
    config["training"]["max_steps"] = max_steps
    try:
        validate(config, schema)
    except WorkflowError:
        event("schema error")
        return  # the schema's own error names the key
    try:
        plan = WorkflowPlan.from_config(config, REPO)
    except ConfigError as err:
        assert CONFIG_KEY.match(str(err)), err
        event(f"refused: {CONFIG_KEY.match(str(err)).group(1)}")
        return
    event("planned")
    # what the plan accepted works downstream: a prompt format, reachable paraphrase counts,
    # existing candidates, and non-empty train and test tables of every task
    PromptFormat.from_config(config["prompt"])
    assert min_valid <= candidates - heldout
    assert all(int(s[6:]) <= candidates for s in strategies if s.startswith("fixed:"))
    assert chars[0] <= chars[1] and ratios[0] <= ratios[1]
    for task in plan.tasks.values():
        tables, _ = build_task_tables(task, config["data"]["caps"])
        assert all(len(tables[s]) for s in REQUIRED_SPLITS)
