"""``python -m promptcl show``: artifacts printed readably, bad paths named."""

import json
import subprocess
import sys

from promptcl.show import main, show_path
from tests.helpers import REPO, synthetic


def test_accuracy_matrix_prints_as_stage_by_task_per_protocol(tmp_path):
    path = tmp_path / "accuracy_matrix.parquet"
    synthetic.accuracy_matrix("my-run").to_parquet(path)
    text = show_path(path)
    assert "Accuracy matrix of run my-run" in text
    assert text.count("R[stage, task] for rougeL") == 2  # both protocols
    assert "trained_prompt" in text and "majority" in text
    header = next(line for line in text.splitlines() if line.startswith("task "))
    assert header.split()[1:] == ["taskA", "taskB", "taskC"]


def test_other_tables_shorten_long_texts(tmp_path):
    path = tmp_path / "candidates.parquet"
    table = synthetic.candidates()
    table.loc[0, "text"] = "x" * 500
    table.to_parquet(path)
    text = show_path(path)
    assert text.startswith("4 rows × 4 columns")
    assert "x" * 59 + "…" in text and "x" * 61 not in text


def test_a_run_folder_prints_its_summary_and_an_adapter_its_record(tmp_path):
    run = tmp_path / "results" / "r1"
    (run / "metrics").mkdir(parents=True)
    (run / "metrics" / "summary.txt").write_text("Run: r1 (T = 2 tasks)\n")
    assert show_path(run) == "Run: r1 (T = 2 tasks)\n"
    adapter = run / "stage_1" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "promptcl_stage.json").write_text(json.dumps({"task": "taskA", "steps": 3}))
    assert json.loads(show_path(adapter)) == {"task": "taskA", "steps": 3}


def test_bad_paths_are_named(tmp_path, capsys):
    assert main(["show", str(tmp_path / "nope.parquet")]) == 2
    assert "nope.parquet: no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["show", str(tmp_path / "empty")]) == 2
    assert "neither a run folder" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    path = tmp_path / "accuracy_matrix.parquet"
    synthetic.accuracy_matrix("cli-run").to_parquet(path)
    proc = subprocess.run(
        [sys.executable, "-m", "promptcl", "show", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO / "workflow_scripts")},
    )
    assert proc.returncode == 0, proc.stderr
    assert "Accuracy matrix of run cli-run" in proc.stdout
