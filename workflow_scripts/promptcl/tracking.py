"""Experiment tracking (config ``tracking``, off by default): TensorBoard event files and MLflow.

One tracked run per workflow run (``results/<run>``): in MLflow a parent run tagged with the
run, method, strategy and seed, and one nested child run per training stage (tag ``stage``) whose
step axis is that stage's optimiser step; in TensorBoard one folder per stage,
``<results>/<dir>/tensorboard/<run>/stage_<k>``, and ``.../<run>/metrics`` for the aggregation.
Per-step curves go through the Trainer's own integrations (``TensorBoardCallback``,
``MLflowCallback``), which log what ``StageTrainer.log`` logs: loss, penalty and its parts,
learning rate, tokens. Around them this module logs the stage's chosen prompt and candidate
losses and, after aggregation, R and the run's metrics.

Only curated values are logged: never the TrainingArguments (their ``output_dir`` is an absolute
path), the environment or a path; :func:`loggable` drops any absolute path left. Tracking off
imports neither mlflow nor tensorboard. Tracking only observes: nothing it does changes what a
stage trains, and a backend that cannot be set up, or fails on the stage's or the aggregation's
summaries, logs a warning instead of failing the job (the per-step callbacks are the Trainer's).
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from promptcl.prompts.scores import CRITERIA
from promptcl.store import paths

log = logging.getLogger(__name__)

BACKENDS = ("tensorboard", "mlflow")
#: tag of every run this module creates: "run" (a workflow run) or "stage" (its child)
LEVEL_TAG = "promptcl.level"
#: the summary columns logged as the run's metrics (per protocol and metric)
SUMMARY_METRICS = ("AP", "BWT", "FWT", "F", "ACC", "unseen_mean")
#: the candidate-score columns logged per candidate (step = candidate id)
CANDIDATE_COLUMNS = (*CRITERIA.values(), "answer_accuracy")


@dataclass(frozen=True)
class TrackingSpec:
    """The ``tracking`` config section (schema defaults)."""

    backends: tuple[str, ...] = ()
    dir: str = "tracking"
    mlflow_tracking_uri: str | None = None
    experiment: str = "promptcl"
    results: str = paths.RESULTS

    @classmethod
    def from_config(cls, cfg: dict | None) -> TrackingSpec:
        cfg = dict(cfg or {})
        backends = tuple(cfg.pop("backends", ()))
        unknown = set(backends) - set(BACKENDS)
        if unknown:
            raise ValueError(f"tracking.backends: unknown {sorted(unknown)}; known {BACKENDS}")
        return cls(backends=backends, **cfg)

    @property
    def enabled(self) -> bool:
        return bool(self.backends)

    @property
    def root(self) -> Path:
        return Path(self.results) / self.dir

    def tensorboard_dir(self, run: str, part: str) -> Path:
        return self.root / "tensorboard" / run / part

    def mlflow_uri(self) -> str:
        """The configured URI, else the local file store under the tracking folder."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return (self.root / "mlruns").resolve().as_uri()


_ABSOLUTE = re.compile(r"(^|[\s='\"(:,])(/|~/|[A-Za-z]:\\)")


def loggable(value) -> bool:
    """A value that may be logged: a number, or a string that names no absolute path."""
    if value is None:
        return False
    if isinstance(value, numbers.Real):
        return not math.isnan(float(value))
    if isinstance(value, str):
        home = os.path.expanduser("~")
        return not _ABSOLUTE.search(value) and not (home != "~" and home in value)
    return False


def curated(prefix: str, values: dict) -> dict[str, object]:
    """``prefix.key`` -> value for the scalar, loggable values of a config section."""
    return {f"{prefix}.{k}": v for k, v in values.items() if loggable(v)}


class _TensorBoard:
    def __init__(self, logdir: Path):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        logdir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(logdir))

    def metrics(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def text(self, key: str, text: str) -> None:
        self.writer.add_text(key, text)

    def close(self, failed: bool) -> None:
        self.writer.close()


class _MLflow:
    """Client-side access to one workflow run's parent run (and, for a stage, its child)."""

    def __init__(self, spec: TrackingSpec, run: str, tags: dict[str, str]):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        self.uri = spec.mlflow_uri()
        if self.uri.startswith("file:"):
            # MLflow 3 keeps its file store (the offline one mlflow-skinny can write) behind
            # an opt-in; a database store (sqlite:///...) needs the full mlflow package
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(spec.experiment)
        self.experiment = (
            found.experiment_id if found else self.client.create_experiment(spec.experiment)
        )
        self.parent = self._find_or_create({"run": run, LEVEL_TAG: "run"}, run, tags)
        self.run_id = self.parent

    def child(self, stage: int, tags: dict[str, str]) -> None:
        """Log to stage ``stage``'s child run from now on (reopened by a resumed job)."""
        keys = {"run": tags["run"], "stage": str(stage), LEVEL_TAG: "stage"}
        extra = {**tags, "mlflow.parentRunId": self.parent}
        self.run_id = self._find_or_create(keys, f"{tags['run']}/stage_{stage}", extra)
        self.client.update_run(self.run_id, status="RUNNING")

    def _find_or_create(self, keys: dict[str, str], name: str, tags: dict[str, str]) -> str:
        """The run with these tags; a stage's only while unfinished (a resumed job continues
        it, a stage trained anew gets a new child run)."""
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in keys.items())
        runs = self.client.search_runs([self.experiment], query, max_results=100)
        if keys[LEVEL_TAG] == "stage":
            runs = [r for r in runs if r.info.status != "FINISHED"]
        if runs:
            return runs[0].info.run_id
        created = self.client.create_run(self.experiment, run_name=name, tags={**tags, **keys})
        return created.info.run_id

    def params(self, values: dict[str, object]) -> None:
        for key, value in values.items():
            self.client.log_param(self.run_id, key, value)

    def metrics(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.client.log_metric(self.run_id, key, value, step=step)

    def text(self, key: str, text: str) -> None:
        self.client.log_text(self.run_id, text, key)

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


class Tracker:
    """One part (a stage, or the aggregation) of one workflow run, on the enabled backends."""

    def __init__(self, spec: TrackingSpec, run: str, part: str, tags: dict[str, str]):
        self.spec, self.run, self.part, self.tags = spec, run, part, tags
        self.tensorboard = (
            _TensorBoard(spec.tensorboard_dir(run, part))
            if ("tensorboard" in spec.backends)
            else None
        )
        self.mlflow = _MLflow(spec, run, tags) if "mlflow" in spec.backends else None
        self._backends = [b for b in (self.tensorboard, self.mlflow) if b is not None]

    def params(self, values: dict[str, object]) -> None:
        if self.mlflow is not None:
            self.mlflow.params({k: v for k, v in values.items() if loggable(v)})
        if self.tensorboard is not None:
            shown = {k: v for k, v in values.items() if loggable(v)}
            self.tensorboard.text("params", _markdown_table(shown))

    def metrics(self, values: dict[str, float], step: int = 0) -> None:
        finite = {k: float(v) for k, v in values.items() if loggable(v)}
        for backend in self._backends:
            backend.metrics(finite, step)

    def text(self, key: str, text: str) -> None:
        """A text: an MLflow artifact ``key`` (a file name), a TensorBoard text card."""
        if self.mlflow is not None:
            self.mlflow.text(key, text)
        if self.tensorboard is not None:
            self.tensorboard.text(key.rsplit(".", 1)[0], "    " + text.replace("\n", "\n    "))

    def close(self, failed: bool = False) -> None:
        for backend in self._backends:
            backend.close(failed)


def _markdown_table(values: dict[str, object]) -> str:
    return "| key | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in values.items())


# --- a training stage -------------------------------------------------------------------------


class StageTracking:
    """What a training stage logs; does nothing when tracking is off (or on ranks > 0)."""

    def __init__(self, tracker: Tracker | None = None, stage: int = 0):
        self.tracker = tracker
        self.stage = stage

    def started(self, job, setup) -> None:
        """The stage's curated parameters, its initial prompt and its candidates' scores."""
        if self.tracker is None:
            return
        self._guarded(self._started, job, setup)

    def _started(self, job, setup) -> None:
        tracker = self.tracker
        run = job.run
        tracker.params(
            {
                "stage": job.stage,
                "task": job.task,
                "method": run["method"],
                "strategy": run["strategy"],
                "seed": run["seed"],
                "examples": len(setup.dataset),
                "prompt.candidate_id": setup.plan.record.get("candidate_id"),
                **curated("lora", job.lora),
                **curated("training", job.training),
            }
        )
        instruction = setup.plan.record.get("instruction")
        if instruction is not None:
            tracker.text("prompt_initial.txt", str(instruction))
        if setup.scores is not None:
            scores = setup.scores
            tracker.text("candidate_scores.csv", scores.to_csv(index=False))
            columns = [c for c in CANDIDATE_COLUMNS if c in scores.columns]
            for row in scores.to_dict("records"):
                values = {f"candidates/{c}": row[c] for c in columns}
                tracker.metrics(values, step=int(row["candidate_id"]))

    def callbacks(self) -> list:
        """The Trainer integrations that log every logged step to this stage's run."""
        if self.tracker is None:
            return []
        out = []
        if self.tracker.tensorboard is not None:
            out.append(_tensorboard_callback(self.tracker.tensorboard.writer))
        if self.tracker.mlflow is not None:
            out.append(_mlflow_callback(self.tracker.mlflow.uri, self.tracker.mlflow.run_id))
        return out

    def finished(self, info: dict | None) -> None:
        """The stage record's summary: the prompt it chose, its loss and time."""
        if self.tracker is None or info is None:
            return
        self._guarded(self._finished, info)

    def _finished(self, info: dict) -> None:
        tracker = self.tracker
        chosen = info.get("evaluation_prompt", {})
        tracker.params({"prompt.chosen_candidate_id": chosen.get("candidate_id")})
        if chosen.get("instruction") is not None:
            tracker.text("prompt_chosen.txt", str(chosen["instruction"]))
        tracker.text("prompt.json", json.dumps(info.get("prompt", {}), indent=2, default=str))
        keys = ("train_loss", "train_seconds", "tokens_per_second", "steps")
        tracker.metrics({f"stage/{k}": info.get(k) for k in keys}, step=self.stage)

    def _guarded(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception:  # tracking only observes: never fail the stage for it
            log.warning("experiment tracking failed; the stage goes on", exc_info=True)


@contextmanager
def stage_tracking(job, main_process: bool = True) -> Iterator[StageTracking]:
    """Stage ``job.stage`` of ``job.run``'s tracked run (a no-op when tracking is off).

    Ends the stage's run as FAILED when the job fails (a resumed job reopens it)."""
    spec = TrackingSpec.from_config(getattr(job, "tracking", None))
    if not (spec.enabled and main_process):
        yield StageTracking()
        return
    tags = {k: str(job.run[k]) for k in ("run", "method", "strategy", "seed")}
    try:
        tracker = Tracker(spec, job.run["run"], f"stage_{job.stage}", tags)
        if tracker.mlflow is not None:
            tracker.mlflow.child(job.stage, {**tags, "stage": str(job.stage), "task": job.task})
    except Exception:  # an unreachable server must not cost the stage
        log.warning("experiment tracking unavailable; the stage trains untracked", exc_info=True)
        yield StageTracking()
        return
    failed = True
    try:
        yield StageTracking(tracker, job.stage)
        failed = False
    finally:
        _end_active_mlflow_run(failed)
        tracker.close(failed)


def _end_active_mlflow_run(failed: bool) -> None:
    """A training that raised leaves the MLflowCallback's run active in this process."""
    import sys

    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and mlflow.active_run() is not None:
        mlflow.end_run(status="FAILED" if failed else "FINISHED")


def _tensorboard_callback(writer):
    from transformers.integrations import TensorBoardCallback

    class StageTensorBoard(TensorBoardCallback):
        """The integration's per-step scalars (``train/loss``, ``train/penalty``, ...) into the
        stage's writer, without its ``args`` and ``model_config`` texts (absolute paths)."""

        def on_train_begin(self, args, state, control, **kwargs):
            pass

        def on_train_end(self, args, state, control, **kwargs):
            if self.tb_writer is not None:
                self.tb_writer.flush()  # the tracker logs more, then closes it

    return StageTensorBoard(tb_writer=writer)


def _mlflow_callback(uri: str, run_id: str):
    from transformers.integrations import MLflowCallback

    class StageMLflow(MLflowCallback):
        """The integration's per-step metrics into the stage's child run. Its own setup would
        log every TrainingArgument (``output_dir``, an absolute path) and read its run from
        environment variables; this one reopens the child run and logs no parameters."""

        def setup(self, args, state, model):
            if state.is_world_process_zero:
                self._ml_flow.set_tracking_uri(uri)
                self._ml_flow.start_run(run_id=run_id)
                self._auto_end_run = True
            self._async_log = False
            self._log_artifacts = False
            self._initialized = True

    return StageMLflow()


# --- a run's aggregation ------------------------------------------------------------------------


def track_run_metrics(cfg: dict | None, run: str, cells, summary, text: str) -> None:
    """After aggregation: R (``R/<protocol>/<metric>/<task>`` over the stages), the run's
    metrics (``<protocol>/<metric>/AP`` ...), their tables and text; ends the tracked run."""
    spec = TrackingSpec.from_config(cfg)
    if not spec.enabled:
        return
    try:
        first = summary.iloc[0] if len(summary) else {}
        tags = {"run": run}
        tags.update({k: str(first[k]) for k in ("method", "strategy", "seed") if k in first})
        tracker = Tracker(spec, run, "metrics", tags)
        try:
            for row in cells.itertuples(index=False):
                key = f"R/{row.protocol}/{row.metric}/{row.task}"
                tracker.metrics({key: row.score}, step=int(row.stage))
            for row in summary.to_dict("records"):
                prefix = f"{row['protocol']}/{row['metric']}"
                values = {f"{prefix}/{k}": row.get(k) for k in SUMMARY_METRICS}
                tracker.metrics(values, step=int(row.get("T", 0)))
            tracker.text("accuracy_matrix.csv", cells.to_csv(index=False))
            tracker.text("summary.csv", summary.to_csv(index=False))
            tracker.text("summary.txt", text)
        finally:
            tracker.close()
    except Exception:
        log.warning("experiment tracking of the run's metrics failed", exc_info=True)
