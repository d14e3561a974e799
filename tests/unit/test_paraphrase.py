"""Candidate prompts: request building, reply parsing, every validation rule, pools, cache."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from promptcl.prompts.backends.local import LocalGenerator
from promptcl.prompts.candidates import (
    COLUMNS,
    CandidateError,
    heldout_prompts,
    hold_out,
    require_valid,
    training_pool,
)
from promptcl.prompts.paraphrase import (
    ReplyCache,
    Request,
    ValidationSpec,
    build_request,
    candidates_from_pool,
    candidates_from_replies,
    collect_replies,
    labels_in,
    load_request_template,
    normalize_text,
    parse_reply,
    validate,
)
from promptcl.prompts.pools import PoolFormatError, load_pool
from tests.helpers import REPO

ORIGINAL = 'Classify the review as "POS" if it is positive or as "NEG" if it is negative.'
LABELS = ["POS", "NEG"]
SPEC = ValidationSpec(min_chars=20, max_chars=400, min_length_ratio=0.3, max_length_ratio=3.0)


class FakeBackend:
    """Counts calls; replies are a function of the request."""

    name, model = "fake", "fake-1"

    def __init__(
        self, reply=lambda r: f"<instruction>Variant {r.index}: label POS or NEG.</instruction>"
    ):
        self.calls = 0
        self.reply = reply

    def options(self):
        return {"temperature": 1.0}

    def complete(self, request):
        self.calls += 1
        return self.reply(request)


def test_request_template_is_bundled_and_fills_in():
    template = load_request_template(REPO / "resources/prompts/paraphrase_request.txt")
    text = build_request(template, ORIGINAL, LABELS, ("<i>", "</i>"))
    assert ORIGINAL in text and '"POS"' in text and '"NEG"' in text
    assert "<i>" in text and "</i>" in text and "{" not in text


def test_template_with_unknown_field_is_rejected(tmp_path):
    bad = tmp_path / "t.txt"
    bad.write_text("Rewrite {instruction} in {style}")
    with pytest.raises(ValueError, match="style"):
        load_request_template(bad)


def test_labels_required_are_those_the_original_mentions():
    assert labels_in(ORIGINAL, LABELS + ["MIXED"]) == ["POS", "NEG"]


def test_parse_reply():
    assert parse_reply("Sure! <instruction> New text. </instruction> bye") == "New text."
    assert parse_reply("no delimiters here") is None
    assert parse_reply("<instruction>unterminated") is None
    assert parse_reply("") is None and parse_reply(None) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (None, "unparsable reply"),
        ("   ", "empty"),
        (ORIGINAL.upper() + "!!", "duplicate of candidate 0"),
        ("Decide whether the review is positive (POS) or negative.", "missing label 'NEG'"),
        ("Label the review POS or NEG, see {examples}.", "stray brace"),
        ("POS or NEG?", "too short (11 chars)"),
        ("Label it POS or NEG. " + "Really. " * 40, "too long"),
    ],
)
def test_each_validation_rule(text, reason):
    reasons = validate(ORIGINAL, [ORIGINAL, text], LABELS, SPEC)
    assert reasons[0] is None
    assert reasons[1] is not None and reasons[1].startswith(reason)


def test_duplicates_between_paraphrases_and_valid_ones():
    good = "Read the movie review and answer POS when it is favourable, NEG otherwise."
    reasons = validate(ORIGINAL, [ORIGINAL, good, good.lower()], LABELS, SPEC)
    assert reasons == [None, None, "duplicate of candidate 1"]
    assert normalize_text("A,  b. C!") == "a b c"


def test_pool_candidates_table_and_min_valid():
    pool = [
        "Read the movie review and answer POS when it is favourable, NEG otherwise.",
        "Decide whether the review is positive or negative.",
    ]
    table = candidates_from_pool(ORIGINAL, LABELS, pool, "file:pool.json", SPEC)
    assert list(table.columns) == COLUMNS
    assert table.loc[0, "text"] == ORIGINAL and table.loc[0, "source"] == "original"
    assert list(table["valid"]) == [True, True, False]
    assert list(table["request_index"]) == [-1, 0, 1]
    require_valid(table, 1, "task363")
    with pytest.raises(CandidateError, match=r"task363: only 1 valid.*missing label 'POS'"):
        require_valid(table, 2, "task363")


@pytest.mark.parametrize(
    "fmt", ["json_list", "json_objects", "json_named", "jsonl", "csv", "parquet"]
)
def test_file_pool_formats(tmp_path, fmt):
    texts = ["first text", "second, with comma", 'third "quoted"']
    if fmt == "json_list":
        path = tmp_path / "p.json"
        path.write_text(json.dumps(texts))
    elif fmt == "json_objects":
        path = tmp_path / "p.json"
        path.write_text(json.dumps([{"text": t} for t in texts]))
    elif fmt == "json_named":
        path = tmp_path / "p.json"
        path.write_text(json.dumps({"other": ["x"], "task363_full": texts}))
    elif fmt == "jsonl":
        path = tmp_path / "p.jsonl"
        path.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n")
    else:
        path = tmp_path / f"p.{fmt}"
        frame = pd.DataFrame({"text": texts, "note": ["a", "b", "c"]})
        frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path)
    assert load_pool(path, key=["task363", "task363_full"]) == texts


def test_shared_paft_style_pool_layout(tmp_path):
    """The {name: [templates]} layout of public prompt pools (e.g. PAFT's) loads by name."""
    pools = {"robust_traindataset_sst2": ["Is this positive? POS or NEG", "Sentiment: POS/NEG"]}
    path = tmp_path / "pools.json"
    path.write_text(json.dumps(pools))
    assert load_pool(path, "robust_traindataset_sst2") == pools["robust_traindataset_sst2"]
    with pytest.raises(PoolFormatError, match="no pool named"):
        load_pool(path, "missing")
    with pytest.raises(FileNotFoundError, match="prompts.file.path"):
        load_pool(tmp_path / "none.json")


def test_bundled_pools_pass_validation():
    instructions = json.loads(
        (REPO / "resources/tasks/sentence_label/instructions.json").read_text()
    )
    pools = sorted((REPO / "resources/prompts/pools").glob("*.json"))
    assert len(pools) >= 3
    for path in pools:
        entry = instructions[path.stem]
        pool = load_pool(path)
        table = candidates_from_pool(
            entry["instruction"], entry["labels"], pool, path.name, ValidationSpec()
        )
        assert len(pool) >= 8 and table["valid"].all(), table[~table["valid"]]


def test_cache_prevents_second_request_and_keys_on_seed(tmp_path):
    cache = ReplyCache(tmp_path / "cache")
    backend = FakeBackend()
    requests = [Request("t", i, "rewrite it", seed=0) for i in range(3)]
    first = collect_replies(backend, requests, cache)
    assert backend.calls == 3
    again = collect_replies(backend, requests, ReplyCache(tmp_path / "cache"))
    assert backend.calls == 3 and again.texts == first.texts
    collect_replies(backend, [Request("t", 0, "rewrite it", seed=1)], cache)
    assert backend.calls == 4
    collect_replies(backend, requests, cache, max_concurrent=3)
    assert backend.calls == 4


def test_candidates_from_replies_parses_and_validates(tmp_path):
    replies_by_index = {
        0: "<instruction>Label the movie review as POS or NEG by its sentiment.</instruction>",
        1: "Here you go: no delimiters",
        2: "",
    }
    backend = FakeBackend(lambda r: replies_by_index[r.index])
    requests = [Request("t", i, "rewrite", 0) for i in range(3)]
    replies = collect_replies(backend, requests, ReplyCache(tmp_path))
    table = candidates_from_replies("t", ORIGINAL, LABELS, replies, backend, SPEC)
    assert list(table["valid"]) == [True, True, False, False]
    assert list(table["reject_reason"])[2:] == ["unparsable reply", "empty reply"]
    assert set(table.loc[1:, "source"]) == {"fake"} and set(table.loc[1:, "model"]) == {"fake-1"}


def test_local_backend_is_seeded_and_cached(tiny_model_dir, tmp_path):
    backend = LocalGenerator(model_dir=tiny_model_dir, model="tiny", max_new_tokens=8)
    requests = [Request("t", i, "Rewrite: say hi", seed=3) for i in range(2)]
    a = collect_replies(backend, requests, ReplyCache(tmp_path / "a")).texts
    b = collect_replies(backend, requests, ReplyCache(tmp_path / "b")).texts
    assert a == b, "same seed and index reproduce the same sample"
    assert a[0] != a[1], "different request indices sample differently"
    other = collect_replies(
        backend, [Request("t", 0, "Rewrite: say hi", seed=4)], ReplyCache(tmp_path / "c")
    )
    assert other.texts[0] != a[0]


def test_real_paft_pool_layout_loads_and_slot_templates_are_rejected():
    path = REPO / "tests/fixtures/paft_prompt_pools_excerpt.json"
    pool = load_pool(path, "robust_traindataset_piqa")
    assert len(pool) == 3
    table = candidates_from_pool(
        pool[0], [], pool, "file:paft", ValidationSpec(max_length_ratio=10)
    )
    # PAFT templates carry slots ({goal}, ...) that our prompt assembly fills itself
    assert set(table.loc[1:, "reject_reason"]) <= {"stray brace", "duplicate of candidate 0"}


def test_heldout_candidates_are_reserved_for_evaluation():
    pool = [
        "Read the movie review and answer POS when it is favourable, NEG otherwise.",
        "Is the review favourable? Say POS if so and NEG if it is not.",
        "Decide whether the review is positive or negative.",  # invalid: labels missing
        "Tag each movie review: POS for praise, NEG for criticism, nothing else.",
    ]
    table = hold_out(candidates_from_pool(ORIGINAL, LABELS, pool, "file:p", SPEC), 2)
    assert list(table.loc[table["heldout"], "candidate_id"]) == [2, 4]
    assert list(training_pool(table)["candidate_id"]) == [0, 1, 3]
    assert heldout_prompts(table) == [("heldout_1", 2, pool[1]), ("heldout_2", 4, pool[3])]
    # held-out paraphrases do not count towards the minimum a strategy can train with
    with pytest.raises(CandidateError, match="only 1 valid"):
        require_valid(table, 2, "t")
    assert not hold_out(table, 0)["heldout"].any()
