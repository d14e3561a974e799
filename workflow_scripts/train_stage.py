"""Rule train_stage: train stage k's LoRA (method × prompt strategy) and save it."""

import json
import shutil
from pathlib import Path

import pandas as pd

from promptcl.adaptive import Selection, rescore_callback
from promptcl.modeling import adapter_name, load_tokenizer, resolve_precision
from promptcl.olora import OLoraSpec, orthogonality_penalty
from promptcl.paraphrase import training_pool
from promptcl.prompting import PromptFormat
from promptcl.runtime import input_list, job_logging
from promptcl.scoring import score_candidates
from promptcl.strategies import (
    PaftSampler,
    SapoOptions,
    parse_strategy,
    training_instruction,
    valid_candidate_ids,
)
from promptcl.training import (
    LoraSpec,
    PromptedDataset,
    TrainSpec,
    build_stage_model,
    encode_candidates,
    latest_checkpoint,
    save_adapter,
    train_stage,
)

METHODS = ("inclora", "olora", "seqlora")


def main(snakemake) -> None:
    params = snakemake.params
    with job_logging(snakemake.log[0], snakemake.threads) as log:
        run = params.stage
        method, (strategy, _) = run["method"], parse_strategy(run["strategy"])
        if method not in METHODS:
            raise ValueError(f"runs.methods: method '{method}' is not implemented")
        stage, seed = int(snakemake.wildcards.stage), run["seed"]
        precision = resolve_precision(params.model["precision"])
        trust = params.model["trust_remote_code"]
        model_dir = Path(snakemake.input.model)
        previous = [Path(p) for p in input_list(snakemake.input.previous)]
        spec = TrainSpec.from_config(dict(params.training), seed=seed, precision=precision)
        model = build_stage_model(
            model_dir,
            previous,
            LoraSpec.from_config(params.lora),
            stage,
            precision,
            trust,
            seed,
            method,
        )
        tokenizer = load_tokenizer(model_dir, trust)
        table = pd.read_parquet(snakemake.input.train)
        fmt = PromptFormat.from_config(params.prompt)
        max_length = params.prompt["max_length"]
        candidates = training_pool(pd.read_parquet(snakemake.input.candidates))
        texts = dict(zip(candidates["candidate_id"].astype(int), candidates["text"], strict=True))
        scores = (
            pd.read_parquet(snakemake.input.scores) if "scores" in snakemake.input.keys() else None
        )
        options = params.options
        sapo = SapoOptions.from_config(options.get("sapo", {}))
        state_dir = Path(params.state_dir)
        callbacks = []
        if strategy == "paft":
            ids = valid_candidate_ids(candidates)
            sampler = PaftSampler(ids, len(table), seed)
            dataset = PromptedDataset(
                encode_candidates(tokenizer, fmt, table, max_length, {i: texts[i] for i in ids}),
                sampler.draw,
            )
            prompt = {"candidate_ids": ids}
            log.info("PAFT over candidates %s", ids)
        else:
            cid, instruction = training_instruction(candidates, run["strategy"], scores, sapo, seed)
            log.info("training prompt: candidate %d (%s): %s", cid, run["strategy"], instruction)
            prompt = {"candidate_id": cid, "instruction": instruction}
            if strategy == "sapo" and sapo.rescore_every:
                ids = valid_candidate_ids(candidates)
                selection = Selection(cid)
                selection.restore(latest_checkpoint(state_dir))
                head = table.head(options["scoring"]["instances"])
                pairs = [(i, texts[i]) for i in ids]

                def scorer(m):
                    return score_candidates(
                        m,
                        tokenizer,
                        fmt,
                        head,
                        pairs,
                        max_length,
                        options["scoring"]["batch_size"],
                        precision,
                    )

                dataset = PromptedDataset(
                    encode_candidates(
                        tokenizer, fmt, table, max_length, {i: texts[i] for i in ids}
                    ),
                    selection.choose,
                )
                callbacks.append(
                    rescore_callback(selection, scorer, sapo.rescore_every, sapo, seed)
                )
                prompt["history"] = selection.history
            else:
                dataset = PromptedDataset(
                    encode_candidates(tokenizer, fmt, table, max_length, {cid: instruction}),
                    lambda epoch, index, cid=cid: cid,
                )
        penalty = None
        if method == "olora":
            olora = OLoraSpec.from_config(options["olora"], stage)
            new, earlier = adapter_name(stage), [adapter_name(i) for i in range(1, stage)]

            def penalty(m):
                return orthogonality_penalty(m, new, earlier, olora)

            log.info("O-LoRA: lambda1=%s lambda2=%s", olora.lambda1, olora.lambda2)
        log.info(
            "stage %d of %s: %s on task %s, %d examples",
            stage,
            run["run"],
            method,
            params.task,
            len(dataset),
        )
        result = train_stage(model, tokenizer, dataset, spec, state_dir, callbacks, penalty)
        out = Path(snakemake.output.adapter)
        save_adapter(model, adapter_name(stage), out, str(model_dir.resolve()))
        info = {**result.info, "run": run["run"], "stage": stage, "task": params.task}
        info["method"] = method
        info["prompt"] = {"strategy": run["strategy"], **prompt}
        if scores is not None:
            info["scoring_seconds"] = float(scores["seconds"].iloc[0])
        (out / "promptcl_stage.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
        result.log.to_parquet(snakemake.output.train_log, index=False)
        shutil.rmtree(state_dir, ignore_errors=True)
        log.info(
            "done: %s", json.dumps({k: info[k] for k in ("steps", "train_loss", "train_seconds")})
        )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821
