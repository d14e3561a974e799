"""One ``train_stage`` job: what the rule gives it (:class:`StageJob`, a JSON file for torchrun
ranks) and, resolved once, what it trains (:class:`StageSpec`): method, strategy, precision,
seeds, training and LoRA specs, prompt format and launch. Torch-free.

The job's undeclared state folder keeps resumable checkpoints, claimed with a fingerprint of the
job, its launch and the contents of its inputs (:func:`claim_state_dir`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from promptcl.methods import Method, method_of
from promptcl.prompts.prompting import PromptFormat
from promptcl.store.hashing import tree_fingerprint
from promptcl.strategies import Strategy, strategy_of
from promptcl.train.specs import LoraSpec, TrainSpec

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
FINGERPRINT_FILE = "fingerprint.json"
#: training keys that decide how the job is launched, not what TrainSpec trains
LAUNCH_KEYS = ("processes", "deepspeed", "deepspeed_single_process")


@dataclass
class StageJob:
    """The inputs, outputs and parameters of one ``train_stage`` job (paths as strings)."""

    stage: int
    run: dict  # run, method, strategy, seed
    task: str
    model_dir: str
    train: str
    candidates: str
    adapter_out: str
    train_log_out: str
    state_dir: str
    model: dict
    prompt: dict
    lora: dict
    training: dict
    options: dict = field(default_factory=dict)
    scores: str | None = None
    previous: list[str] = field(default_factory=list)
    #: other tasks this stage trains with: {"role": "joint" | "replay", "task", "stage",
    #: "train", "candidates", "scores" (joint, if scored), "record" (replay: that stage's adapter)}
    companions: list[dict] = field(default_factory=list)
    deepspeed_config: str | None = None
    threads: int = 1
    gpus: int = 0
    #: the ``tracking`` config section; read from the config, not the params, so that turning
    #: tracking on or off reruns nothing, and left out of the fingerprint
    tracking: dict = field(default_factory=dict)

    @classmethod
    def from_snakemake(cls, smk) -> StageJob:
        params, inputs = smk.params, smk.input
        previous = inputs.get("previous", [])
        return cls(
            stage=int(smk.wildcards.stage),
            run=dict(params.stage),
            task=params.task,
            model_dir=str(inputs.model),
            train=str(inputs.train),
            candidates=str(inputs.candidates),
            scores=str(inputs.scores) if "scores" in inputs.keys() else None,
            previous=[previous] if isinstance(previous, str) else [str(p) for p in previous],
            deepspeed_config=str(inputs.deepspeed) if "deepspeed" in inputs.keys() else None,
            adapter_out=str(smk.output.adapter),
            train_log_out=str(smk.output.train_log),
            state_dir=str(params.state_dir),
            model=dict(params.model),
            prompt=dict(params.prompt),
            lora=dict(params.lora),
            training=dict(params.training),
            options=dict(params.options),
            companions=[dict(c) for c in params.companions],
            threads=int(smk.threads),
            gpus=int(smk.resources.get("gpu", 0) or 0),
            tracking=dict(smk.config.get("tracking") or {}),
        )

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> StageJob:
        return cls(**json.loads(Path(path).read_text()))

    def uses_deepspeed(self, processes: int) -> bool:
        """DeepSpeed for several processes, or for one when asked for."""
        return bool(self.deepspeed_config) and (
            processes > 1 or bool(self.training.get("deepspeed_single_process", False))
        )

    def train_spec(self, processes: int) -> TrainSpec:
        """TrainSpec for this job; DeepSpeed only where it was asked for."""
        from promptcl.model.devices import (
            resolve_precision,  # torch: only in the job, never the DAG
        )

        cfg = {k: v for k, v in self.training.items() if k not in LAUNCH_KEYS}
        cfg.update(method_of(self.run["method"]).training_overrides(self.options))
        spec = TrainSpec.from_config(
            cfg, seed=self.run["seed"], precision=resolve_precision(self.model["precision"])
        )
        deepspeed = self.deepspeed_config if self.uses_deepspeed(processes) else None
        return replace(spec, deepspeed=deepspeed)

    def resolve(self, processes: int) -> StageSpec:
        """Everything the stage trains with, resolved once for this launch."""
        strategy, argument = strategy_of(self.run["strategy"])
        train = self.train_spec(processes)
        return StageSpec(
            job=self,
            method=method_of(self.run["method"]),
            strategy=strategy,
            strategy_argument=argument,
            train=train,
            lora=LoraSpec.from_config(self.lora),
            fmt=PromptFormat.from_config(self.prompt),
            processes=processes,
        )

    def fingerprint(self, processes: int) -> dict:
        """What a checkpoint in the state folder must agree with to be resumed: the whole job
        (parameters and input paths), the *contents* of its inputs (a task table, candidate
        pool or earlier adapter rewritten in place by an upstream rerun changes it) and its
        launch (ZeRO checkpoints are tied to the process count)."""
        skip = ("threads", "gpus", "tracking")
        job = {k: v for k, v in asdict(self).items() if k not in skip}
        digest = hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode())
        digest.update(tree_fingerprint(self.input_paths()).encode())
        return {
            "processes": processes,
            "deepspeed": self.uses_deepspeed(processes),
            "sha256": digest.hexdigest(),
        }

    def input_paths(self) -> list[Path]:
        """Every file or folder the stage reads: what its checkpoints were computed from."""
        paths = [self.model_dir, self.train, self.candidates, *self.previous]
        paths += [p for p in (self.scores, self.deepspeed_config) if p]
        for companion in self.companions:
            keys = ("train", "candidates", "scores", "record")
            paths += [companion[k] for k in keys if companion.get(k)]
        return [Path(p) for p in paths]


@dataclass(frozen=True)
class StageSpec:
    """A :class:`StageJob` resolved for one launch: what stage k trains, and how."""

    job: StageJob
    method: Method
    strategy: Strategy
    strategy_argument: int | None
    train: TrainSpec  # precision, seed and DeepSpeed resolved
    lora: LoraSpec
    fmt: PromptFormat
    processes: int

    @property
    def stage(self) -> int:
        return self.job.stage

    @property
    def precision(self) -> str:
        return self.train.precision

    @property
    def seed(self) -> tuple[int, int]:
        """(run seed, stage): PAFT's draws and SAPO's sampling differ between stages."""
        return int(self.job.run["seed"]), int(self.job.stage)

    @property
    def state_dir(self) -> Path:
        return Path(self.job.state_dir)


def claim_state_dir(state_dir: Path, fingerprint: dict) -> None:
    """Keep the state folder's checkpoints only if they were written by this same job.

    A job that failed, had its parameters (or process count) changed and was rerun must not
    resume another configuration's weights and optimiser state.
    """
    path = state_dir / FINGERPRINT_FILE
    if path.is_file() and json.loads(path.read_text()) != fingerprint:
        stale = sorted(p.name for p in state_dir.glob("checkpoint-*"))
        log.warning("discarding checkpoints %s written by a different job or launch", stale)
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fingerprint, indent=2) + "\n")
