"""Artifacts that prove they are whole (promptcl.store.integrity, promptcl.store.verify): atomic
writes that
never leave a final-named artifact after a full disk, a failed flush, a file-size limit or a
killed process; checksum records; consumers that name the damaged file, its rule and the rerun;
``python -m promptcl verify`` on a results folder."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from promptcl.show import main as cli
from promptcl.store import integrity
from promptcl.store.integrity import DamagedArtifactError
from promptcl.store.verify import verify_results
from tests.helpers import REPO

RUN = "seq-inclora-original-s0"


def table(n: int = 50) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"r{i}" for i in range(n)], "text": ["x" * 40] * n})


def fake_safetensors(path: Path, floats: int = 64) -> None:
    """A valid safetensors file (header + data) without torch."""
    header = {"w": {"dtype": "F32", "shape": [floats], "data_offsets": [0, 4 * floats]}}
    blob = json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + b"\0" * (4 * floats))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def no_temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if integrity.TEMP_MARK in p.name]


def results_tree(root: Path) -> Path:
    """A small results folder: a task table, an adapter folder, stage predictions, the summary."""
    results = root / "results"
    integrity.write_parquet(table(), results / "tasks/task1/train.parquet")
    integrity.write_json(results / "tasks/task1/task.json", {"instruction": "i", "labels": []})
    with integrity.staged_dir(results / RUN / "stage_1/adapter") as folder:
        fake_safetensors(folder / "adapter_model.safetensors")
        (folder / "adapter_config.json").write_text('{"peft_type": "LORA"}')
        (folder / "promptcl_stage.json").write_text('{"stage": 1}')
    with integrity.staged_dir(results / RUN / "stage_1/predictions") as folder:
        table(8).to_parquet(folder / "task1.parquet")
    integrity.write_parquet(table(3), results / "summary.parquet")
    integrity.write_text(results / "summary.txt", "summary\n")
    return results


# --- records and who writes what ---------------------------------------------------------------


def test_a_written_table_is_recorded_and_read_back():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "results/tasks/task1/train.parquet"
        integrity.write_parquet(table(), path)
        record = json.loads(integrity.sidecar(path).read_text())
        assert record["size"] == path.stat().st_size and len(record["sha256"]) == 64
        assert record["rule"] == "prepare_tasks"
        assert integrity.read_parquet(path).equals(table())
        assert no_temporaries(Path(tmp)) == []


@pytest.mark.parametrize(
    ("path", "rule", "target"),
    [
        (f"results/{RUN}/stage_2/adapter/adapter_model.safetensors", "train_stage",
         f"results/{RUN}/stage_2/adapter"),
        (f"/w/results/{RUN}/stage_1/predictions/task1.parquet", "predict_stage",
         f"results/{RUN}/stage_1/predictions"),
        ("results/zero_shot/predictions/task1.parquet", "evaluate_base",
         "results/zero_shot/predictions/task1.parquet"),
        (f"results/{RUN}/metrics/instance_scores.parquet", "aggregate_run",
         f"results/{RUN}/metrics/instance_scores.parquet"),
        ("results/prompts/task1/candidates.parquet", "paraphrase_prompts",
         "results/prompts/task1/candidates.parquet"),
        ("results/comparisons.parquet", "compare_runs", "results/comparisons.parquet"),
        ("results/model/hf/model.safetensors", "prepare_model", "results/model/hf"),
        ("/data/tasks/task1/train.json", None, "/data/tasks/task1/train.json"),
    ],
)  # fmt: skip
def test_every_artifact_is_traced_to_its_rule_and_declared_output(path, rule, target):
    assert integrity.producer(path) == (rule, target)


# --- consumers name what is damaged --------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (truncate, "truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\1"), "differs from its recorded sha256"),
        (lambda p: p.write_bytes(p.read_bytes() + b"junk"), "size differs"),
    ],
)
def test_a_damaged_table_fails_naming_file_rule_and_rerun(tmp_path, damage, problem):
    path = tmp_path / "results/tasks/task1/train.parquet"
    integrity.write_parquet(table(), path)
    damage(path)
    with pytest.raises(DamagedArtifactError) as err:
        integrity.read_parquet(path)
    message = str(err.value)
    assert str(path) in message and problem in message
    assert "rule prepare_tasks" in message
    assert "snakemake --cores all --forcerun results/tasks/task1/train.parquet" in message


def test_a_folder_s_manifest_catches_a_missing_or_changed_file(tmp_path):
    results = results_tree(tmp_path)
    adapter = results / RUN / "stage_1/adapter"
    manifest = json.loads((adapter / integrity.MANIFEST).read_text())
    assert manifest["rule"] == "train_stage"
    assert set(manifest["files"]) == {
        "adapter_model.safetensors",
        "adapter_config.json",
        "promptcl_stage.json",
    }
    assert integrity.verify_dir(adapter) is True
    (adapter / "promptcl_stage.json").write_text('{"stage": 2}')  # same size, other content
    with pytest.raises(DamagedArtifactError, match="promptcl_stage.json is damaged"):
        integrity.verify_dir(adapter)
    (adapter / "promptcl_stage.json").unlink()
    with pytest.raises(DamagedArtifactError, match="missing, though its record lists it"):
        integrity.verify_dir(adapter)


def test_unrecorded_artifacts_are_checked_for_structure(tmp_path):
    """Artifacts written before records existed: a truncated parquet or safetensors file still
    fails naming itself (the error the issue met was safetensors' bare 'invalid header')."""
    adapter = tmp_path / f"results/{RUN}/stage_1/adapter"
    adapter.mkdir(parents=True)
    fake_safetensors(adapter / "adapter_model.safetensors")
    parquet = tmp_path / "results/zero_shot/predictions/task1.parquet"
    parquet.parent.mkdir(parents=True)
    table().to_parquet(parquet)
    assert integrity.verify_dir(adapter) is False  # whole, but unrecorded
    assert integrity.verify_file(parquet) is False
    truncate(adapter / "adapter_model.safetensors", 0.7)
    truncate(parquet)
    with pytest.raises(DamagedArtifactError, match=r"adapter_model.safetensors is damaged \(trunc"):
        integrity.verify_dir(adapter)
    with pytest.raises(DamagedArtifactError, match="task1.parquet is damaged .*rule evaluate_base"):
        integrity.verify_file(parquet)


def test_a_job_s_inputs_are_checked_all_at_once_and_user_files_are_left_alone(tmp_path):
    results = results_tree(tmp_path)
    user_file = tmp_path / "tasks/task1/train.json"
    user_file.parent.mkdir(parents=True)
    user_file.write_text("[{broken")  # the task reader's to report, not an artifact
    inputs = [
        str(results / "tasks/task1/train.parquet"),
        str(results / RUN / "stage_1/adapter"),
        str(user_file),
    ]
    integrity.verify_inputs(inputs)
    truncate(results / "tasks/task1/train.parquet")
    truncate(results / RUN / "stage_1/adapter/adapter_model.safetensors")
    with pytest.raises(DamagedArtifactError) as err:
        integrity.verify_inputs(inputs)
    message = str(err.value)
    assert "train.parquet is damaged" in message and "rule prepare_tasks" in message
    assert "adapter_model.safetensors is damaged" in message and "rule train_stage" in message
    assert f"--forcerun results/{RUN}/stage_1/adapter" in message


def test_loading_a_damaged_adapter_names_it_before_peft_reads_it(tmp_path):
    from promptcl.model.modeling import attach_adapters

    results = results_tree(tmp_path)
    adapter = results / RUN / "stage_1/adapter"
    truncate(adapter / "adapter_model.safetensors")
    with pytest.raises(DamagedArtifactError, match="adapter_model.safetensors is damaged"):
        attach_adapters(object(), [adapter])


# --- faults while writing ------------------------------------------------------------------------


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_writing_leaves_the_old_artifact_whole(tmp_path):
    path = tmp_path / "results/summary.parquet"
    integrity.write_parquet(table(3), path)

    def half_then_full(tmp: Path) -> None:
        tmp.write_bytes(b"PAR1" + b"\0" * 100)  # part of a file, then the disk is full
        enospc()

    with pytest.raises(OSError) as err:
        integrity.write_with(path, half_then_full)
    assert err.value.errno == errno.ENOSPC
    assert no_temporaries(tmp_path) == []
    assert not integrity.sidecar(path).exists()  # the old record went before the write
    assert integrity.read_parquet(path).equals(table(3))  # the old table, whole


def test_a_full_disk_reported_when_flushing_leaves_no_artifact(tmp_path, monkeypatch):
    """Network filesystems often report ENOSPC only at fsync/close."""
    path = tmp_path / "results/tasks/task1/train.parquet"
    monkeypatch.setattr(integrity.os, "fsync", enospc)
    with pytest.raises(OSError, match="No space left"):
        integrity.write_parquet(table(), path)
    assert not path.exists() and not integrity.sidecar(path).exists()
    assert no_temporaries(tmp_path) == []


def test_a_full_disk_while_building_a_folder_leaves_no_folder(tmp_path):
    final = tmp_path / f"results/{RUN}/stage_1/adapter"
    with pytest.raises(OSError), integrity.staged_dir(final) as folder:
        fake_safetensors(folder / "adapter_model.safetensors")
        enospc()  # e.g. while the stage record is written
    assert not final.exists()
    assert no_temporaries(tmp_path) == []


def test_a_failed_adapter_save_leaves_no_adapter_folder(tmp_path):
    """The stage's save as recipe.save does it: the adapter written into the staged folder,
    the one atomic layer; a full disk in PEFT's writer leaves neither folder nor temporary."""
    from promptcl.model.adapters import save_adapter

    class FullDisk:
        def save_pretrained(self, folder, **kwargs):
            Path(folder, "stage_1").mkdir(parents=True)
            fake_safetensors(Path(folder) / "stage_1" / "adapter_model.safetensors")
            enospc()

    out = tmp_path / f"results/{RUN}/stage_1/adapter"
    with pytest.raises(OSError), integrity.staged_dir(out, "train_stage") as folder:
        save_adapter(FullDisk(), "stage_1", folder, "base")
    assert not out.exists() and no_temporaries(tmp_path) == []


def test_a_saved_adapter_is_a_flat_peft_folder_without_temporaries(tmp_path):
    """PEFT writes a named adapter into a subfolder (with a model card beside it): the adapter
    folder holds that subfolder's files only, and nothing of the scratch it was written to."""
    from promptcl.model.adapters import save_adapter

    class Peft:
        def save_pretrained(self, folder, selected_adapters, **kwargs):
            (Path(folder) / selected_adapters[0]).mkdir(parents=True)
            (Path(folder) / "README.md").write_text("card")
            fake_safetensors(Path(folder) / selected_adapters[0] / "adapter_model.safetensors")
            config = Path(folder) / selected_adapters[0] / "adapter_config.json"
            config.write_text('{"r": 4}')

    out = tmp_path / f"results/{RUN}/stage_1/adapter"
    with integrity.staged_dir(out, "train_stage") as folder:
        save_adapter(Peft(), "stage_1", folder, "base")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["adapter_config.json", "adapter_model.safetensors", integrity.MANIFEST]
    assert json.loads((out / "adapter_config.json").read_text()) == {
        "base_model_name_or_path": "base",
        "r": 4,
    }
    assert no_temporaries(tmp_path) == []


def _child(code: str, tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow_scripts")}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_file_size_limit_hit_by_the_native_writers_leaves_no_artifact(tmp_path):
    """A real write failure from the kernel (EFBIG under RLIMIT_FSIZE: what a full quota or disk
    looks like to pyarrow's and safetensors' own writers, which Python cannot intercept)."""
    child = _child(
        """
        import resource, signal
        import pandas as pd
        from promptcl.store import integrity
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        big = pd.DataFrame({"x": [str(i) * 20 for i in range(100_000)]})
        for name, write in [
            ("table", lambda: integrity.write_parquet(big, "results/summary.parquet")),
            ("text", lambda: integrity.write_text("results/summary.txt", "x" * 300_000)),
        ]:
            try:
                write()
                print(name, "written")
            except OSError as err:
                print(name, "failed", err.errno)
        """,
        tmp_path,
    )
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert "table failed 27" in out and "text failed 27" in out, out  # EFBIG
    assert not (tmp_path / "results/summary.parquet").exists()
    assert not (tmp_path / "results/summary.txt").exists()
    assert no_temporaries(tmp_path) == []


def test_a_job_killed_while_writing_leaves_only_a_temporary_that_the_next_write_clears(tmp_path):
    child = _child(
        """
        import time
        from promptcl.store import integrity
        with integrity.atomic_path("results/tasks/task1/train.parquet") as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"PAR1" * 1000)
                fh.flush()
                print("writing", flush=True)
                time.sleep(60)
        """,
        tmp_path,
    )
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    final = tmp_path / "results/tasks/task1/train.parquet"
    assert not final.exists()
    assert len(no_temporaries(tmp_path)) == 1
    assert [p.name for p in verify_results(tmp_path / "results").leftovers] == no_temporaries(
        tmp_path
    )
    integrity.write_parquet(table(), final)  # the rerun
    assert no_temporaries(tmp_path) == [] and integrity.verify_file(final)


def test_replacing_a_folder_keeps_the_old_one_until_the_new_one_is_complete(tmp_path):
    final = tmp_path / "results/tasks"
    with integrity.staged_dir(final) as folder:
        (folder / "a.txt").write_text("old")
    with pytest.raises(OSError), integrity.staged_dir(final) as folder:
        (folder / "a.txt").write_text("new")
        enospc()
    assert (final / "a.txt").read_text() == "old"
    with integrity.staged_dir(final) as folder:
        (folder / "a.txt").write_text("new")
    assert (final / "a.txt").read_text() == "new" and integrity.verify_dir(final)
    assert no_temporaries(tmp_path) == []


# --- python -m promptcl verify -------------------------------------------------------------------


def test_verify_passes_a_whole_folder_and_names_each_damaged_artifact_and_the_rerun(
    tmp_path, capsys
):
    results = results_tree(tmp_path)
    assert cli(["verify", str(results)]) == 0
    out = capsys.readouterr().out
    assert "0 damaged" in out and "artifacts checked" in out
    truncate(results / RUN / "stage_1/adapter/adapter_model.safetensors")
    truncate(results / RUN / "stage_1/predictions/task1.parquet")
    (results / "summary.txt").unlink()  # its record remains: Snakemake must redo it
    assert cli(["verify", str(results)]) == 1
    out = capsys.readouterr().out
    assert "3 damaged" in out
    for name, rule in [
        ("adapter_model.safetensors", "train_stage"),
        ("predictions/task1.parquet", "predict_stage"),
        ("summary.txt", "summarize"),
    ]:
        line = next(x for x in out.splitlines() if name in x and x.startswith("DAMAGED"))
        assert f"rule {rule}" in line, line
    command = next(x for x in out.splitlines() if x.strip().startswith("snakemake "))
    assert command.split() == [
        "snakemake",
        "--cores",
        "all",
        "--forcerun",
        f"results/{RUN}/stage_1/adapter",
        f"results/{RUN}/stage_1/predictions",
        "results/summary.txt",
    ]


def test_verify_checks_the_model_folder_against_its_fingerprints(tmp_path, capsys):
    from promptcl.store.hashing import file_fingerprint

    results = tmp_path / "results"
    model = results / "model/hf"
    model.mkdir(parents=True)
    fake_safetensors(model / "model.safetensors", 1000)
    files = {"model.safetensors": file_fingerprint(model / "model.safetensors")}
    integrity.write_json(results / "model/manifest.json", {"files": files})
    assert cli(["verify", str(results)]) == 0
    capsys.readouterr()
    truncate(model / "model.safetensors")
    assert cli(["verify", str(results)]) == 1
    out = capsys.readouterr().out
    assert "model.safetensors is damaged" in out and "rule prepare_model" in out
    assert "--forcerun results/model/hf" in out


def test_verify_of_a_missing_folder_is_a_usage_error(tmp_path, capsys):
    assert cli(["verify", str(tmp_path / "nowhere")]) == 2
    assert "no such results folder" in capsys.readouterr().err
