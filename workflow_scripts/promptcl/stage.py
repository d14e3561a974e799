"""One training stage as a self-contained job: everything the rule gives it, in one JSON file.

The rule's script turns its Snakemake object into a :class:`StageJob` and either runs it in
process or hands the JSON to ``torchrun``, whose ranks all call :func:`run_stage_job`. That is
how a multi-GPU job runs the same entry point as a CPU one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd

from .adaptive import Selection, rescore_callback
from .launch import is_main_process, preemption_guard, world_size
from .modeling import adapter_name, file_fingerprint, load_tokenizer, resolve_precision
from .olora import OLoraSpec, orthogonality_penalty
from .paraphrase import training_pool
from .prompting import PromptFormat
from .scoring import score_candidates
from .strategies import (
    ORIGINAL_ID,
    PaftSampler,
    SapoOptions,
    parse_strategy,
    training_instruction,
    valid_candidate_ids,
)
from .training import (
    LoraSpec,
    PromptedDataset,
    TrainSpec,
    build_stage_model,
    encode_candidates,
    latest_checkpoint,
    save_adapter,
    train_stage,
    zero_stage,
)

log = logging.getLogger(__name__)

METHODS = ("inclora", "olora", "seqlora")
JOB_FILE = "job.json"
FINGERPRINT_FILE = "fingerprint.json"
# training keys that decide how the job is launched, not what TrainSpec trains
LAUNCH_KEYS = ("processes", "deepspeed", "deepspeed_single_process")


@dataclass
class StageJob:
    """The inputs, outputs and parameters of one ``train_stage`` job (paths as strings)."""

    stage: int
    run: dict
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
    deepspeed_config: str | None = None
    threads: int = 1
    gpus: int = 0

    @classmethod
    def from_snakemake(cls, smk) -> StageJob:
        params = smk.params
        inputs = smk.input
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
            threads=int(smk.threads),
            gpus=int(smk.resources.get("gpu", 0) or 0),
        )

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> StageJob:
        return cls(**json.loads(Path(path).read_text()))

    def train_spec(self, processes: int) -> TrainSpec:
        """TrainSpec for this job; DeepSpeed only where it was asked for."""
        cfg = {k: v for k, v in self.training.items() if k not in LAUNCH_KEYS}
        spec = TrainSpec.from_config(
            cfg,
            seed=self.run["seed"],
            precision=resolve_precision(self.model["precision"]),
        )
        return replace(
            spec, deepspeed=self.deepspeed_config if self.uses_deepspeed(processes) else None
        )

    def uses_deepspeed(self, processes: int) -> bool:
        return bool(self.deepspeed_config) and (
            processes > 1 or bool(self.training.get("deepspeed_single_process", False))
        )

    def input_paths(self) -> list[Path]:
        """Every file or folder the stage reads: what its checkpoints were computed from."""
        paths = [self.model_dir, self.train, self.candidates, *self.previous]
        paths += [p for p in (self.scores, self.deepspeed_config) if p]
        return [Path(p) for p in paths]

    def fingerprint(self, processes: int) -> dict:
        """What a checkpoint in the state folder must agree with to be resumed: the whole job
        (parameters and input paths), the *contents* of its inputs (a task table, candidate
        pool or earlier adapter rewritten in place by an upstream rerun changes it) and its
        launch (ZeRO checkpoints are tied to the process count)."""
        job = {k: v for k, v in asdict(self).items() if k not in ("threads", "gpus")}
        ds = self.uses_deepspeed(processes)
        digest = hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode())
        for path in self.input_paths():
            if not path.exists():  # the job will fail on it; nothing was computed from it
                digest.update(f"{path}=missing".encode())
                continue
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for file in files:
                digest.update(f"{file.relative_to(path.parent)}={file_fingerprint(file)}".encode())
        return {"processes": processes, "deepspeed": ds, "sha256": digest.hexdigest()}


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


def _dataset_and_prompt(job: StageJob, model_dir: Path, table, candidates, scores, callbacks):
    """The training examples with the run's prompt strategy wired in, and the prompt record."""
    params_run = job.run
    strategy = parse_strategy(params_run["strategy"])[0]
    trust = job.model["trust_remote_code"]
    tokenizer = load_tokenizer(model_dir, trust)
    fmt = PromptFormat.from_config(job.prompt)
    texts = dict(zip(candidates["candidate_id"].astype(int), candidates["text"], strict=True))
    sapo = SapoOptions.from_config(job.options.get("sapo", {}))
    # every stage draws afresh: PAFT's tables and SAPO's sampling are seeded by (seed, stage)
    seed = (int(params_run["seed"]), int(job.stage))
    if strategy == "paft":
        ids = valid_candidate_ids(candidates)
        sampler = PaftSampler(ids, len(table), *seed)
        dataset = PromptedDataset(
            encode_candidates(tokenizer, fmt, table, {i: texts[i] for i in ids}), sampler.draw
        )
        log.info("PAFT over candidates %s", ids)
        return tokenizer, dataset, {"candidate_ids": ids}
    cid, instruction = training_instruction(candidates, params_run["strategy"], scores, sapo, seed)
    log.info("training prompt: candidate %d (%s): %s", cid, params_run["strategy"], instruction)
    prompt = {"candidate_id": cid, "instruction": instruction}
    if strategy == "sapo":
        prompt["criterion"] = sapo.criterion
    if strategy == "sapo" and sapo.rescore_every:
        ids = valid_candidate_ids(candidates)
        selection = Selection(cid)
        selection.restore(latest_checkpoint(Path(job.state_dir)))
        scoring = job.options["scoring"]
        head = table.head(scoring["instances"])
        pairs = [(i, texts[i]) for i in ids]
        precision = resolve_precision(job.model["precision"])

        def scorer(m):
            return score_candidates(
                m, tokenizer, fmt, head, pairs, scoring["batch_size"], precision
            )

        dataset = PromptedDataset(
            encode_candidates(tokenizer, fmt, table, {i: texts[i] for i in ids}), selection.choose
        )
        callbacks.append(rescore_callback(selection, scorer, sapo.rescore_every, sapo, seed))
        prompt["history"] = selection.history
        return tokenizer, dataset, prompt
    dataset = PromptedDataset(
        encode_candidates(tokenizer, fmt, table, {cid: instruction}),
        lambda epoch, index, cid=cid: cid,
    )
    return tokenizer, dataset, prompt


def evaluation_prompt(prompt: dict, candidates: pd.DataFrame) -> dict:
    """The prompt the trained-prompt protocol evaluates this stage's task with: the candidate
    the stage trained with (the last one when SAPO re-scored during the stage), or the original
    for PAFT, which trained with many."""
    if prompt.get("history"):
        cid = int(prompt["history"][-1]["candidate_id"])
    else:
        cid = int(prompt.get("candidate_id", ORIGINAL_ID))
    row = candidates[candidates["candidate_id"].astype(int) == cid]
    return {"candidate_id": cid, "instruction": str(row["text"].iloc[0])}


def run_stage_job(job: StageJob, processes: int = 1) -> dict | None:
    """Set up, train and (on rank 0) save stage k; returns the stage record on rank 0.

    SIGTERM/SIGUSR1 are caught from the start to the end of the job: during setup or training
    they mean "checkpoint after the next step and stop"; during the final save they wait."""
    guard = preemption_guard()
    guard.install()
    try:
        return _run_stage_job(job, processes, guard)
    finally:
        guard.uninstall()


def _run_stage_job(job: StageJob, processes: int, guard) -> dict | None:
    method = job.run["method"]
    if method not in METHODS:
        raise ValueError(f"runs.methods: method '{method}' is not implemented")
    stage, seed = job.stage, job.run["seed"]
    precision = resolve_precision(job.model["precision"])
    model_dir = Path(job.model_dir)
    state_dir = Path(job.state_dir)
    spec = job.train_spec(processes)
    if method == "olora" and spec.deepspeed and zero_stage(spec.deepspeed) == 3:
        raise ValueError(
            f"training.deepspeed: {spec.deepspeed} is ZeRO-3, which shards the LoRA A matrices "
            "that the O-LoRA penalty reads outside the forward pass; "
            "use config/deepspeed/zero2.json"
        )
    model = build_stage_model(
        model_dir,
        [Path(p) for p in job.previous],
        LoraSpec.from_config(job.lora),
        stage,
        precision,
        job.model["trust_remote_code"],
        seed,
        method,
    )
    table = pd.read_parquet(job.train)
    candidates = training_pool(pd.read_parquet(job.candidates))
    scores = pd.read_parquet(job.scores) if job.scores else None
    callbacks: list = []
    tokenizer, dataset, prompt = _dataset_and_prompt(
        job, model_dir, table, candidates, scores, callbacks
    )
    penalty = None
    if method == "olora":
        olora = OLoraSpec.from_config(job.options["olora"], stage)
        new, earlier = adapter_name(stage), [adapter_name(i) for i in range(1, stage)]

        def penalty(m):
            return orthogonality_penalty(m, new, earlier, olora)

        log.info("O-LoRA: lambda1=%s lambda2=%s", olora.lambda1, olora.lambda2)
    log.info(
        "stage %d of %s: %s on task %s, %d examples, %d process(es)%s",
        stage,
        job.run["run"],
        method,
        job.task,
        len(dataset),
        world_size(),
        f", DeepSpeed {spec.deepspeed}" if spec.deepspeed else "",
    )
    result = train_stage(model, tokenizer, dataset, spec, state_dir, callbacks, penalty, guard)
    if not is_main_process():
        return None
    out = Path(job.adapter_out)
    save_adapter(model, adapter_name(stage), out, str(model_dir.resolve()), result.state_dict)
    info = {**result.info, "run": job.run["run"], "stage": stage, "task": job.task}
    info["method"] = method
    info["prompt"] = {"strategy": job.run["strategy"], **prompt}
    info["evaluation_prompt"] = evaluation_prompt(prompt, candidates)
    if scores is not None:
        info["scoring_seconds"] = float(scores["seconds"].iloc[0])
    (out / "promptcl_stage.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    result.log.to_parquet(job.train_log_out, index=False)
    shutil.rmtree(state_dir, ignore_errors=True)
    log.info("done: %s", json.dumps({k: info[k] for k in ("steps", "train_loss", "train_seconds")}))
    return info
