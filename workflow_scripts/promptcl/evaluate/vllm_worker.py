"""The vLLM side of ``generation.engine: vllm``, run in the environment that has vLLM (its own
interpreter, ``generation.vllm.python``): ``python -m promptcl.evaluate.vllm_worker REQUEST
RESPONSE``.

It imports nothing of the project but this file (the vLLM environment pins its own
transformers), reads the token ids the project encoded, starts one engine, generates greedily for
all of them in one batch (the state's one LoRA on every request) and writes the new token ids.
Failures are written as ``{"error": kind, "message": ...}`` for the caller to explain.
"""

from __future__ import annotations

import json
import sys
import time
import traceback

#: LoRA ranks vLLM accepts for ``max_lora_rank`` (its LoRAConfig; it refuses other values)
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_rank_limit(rank: int) -> int:
    """The smallest rank vLLM accepts that holds ``rank``; ValueError beyond its largest."""
    for allowed in LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"rank {rank} exceeds vLLM's largest max_lora_rank {LORA_RANKS[-1]}")


def classify(err: BaseException) -> str:
    """A failure's kind: what the caller names as its cause."""
    text = f"{type(err).__name__}: {err}".lower()
    if isinstance(err, ImportError):
        return "missing"
    if "out of memory" in text or "outofmemory" in text or "kv cache" in text:
        return "memory"
    if "lora" in text and "rank" in text:
        return "rank"
    return "engine"


def run(request: dict) -> dict:
    """Start the engine and generate; the response with timings."""
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    options = request["engine"]
    lora = request.get("lora")
    started = time.perf_counter()
    kwargs = {
        "model": request["model"],
        "tokenizer": request["model"],
        "dtype": request["dtype"],
        "seed": 0,
        "max_model_len": options["max_model_len"],
        "tensor_parallel_size": options["tensor_parallel_size"],
        "gpu_memory_utilization": options["gpu_memory_utilization"],
        "enforce_eager": options["enforce_eager"],
        "trust_remote_code": options.get("trust_remote_code", False),
    }
    if options.get("max_num_seqs"):
        kwargs["max_num_seqs"] = options["max_num_seqs"]
    if lora:
        kwargs.update(
            enable_lora=True,
            max_loras=1,
            max_lora_rank=lora_rank_limit(int(request["lora_rank"])),
        )
    llm = LLM(**kwargs)
    start_seconds = time.perf_counter() - started
    prompts = [TokensPrompt(prompt_token_ids=r["prompt"]) for r in request["requests"]]
    params = [
        SamplingParams(
            temperature=0.0,
            max_tokens=int(r["max_tokens"]),
            stop_token_ids=list(r["stop"]),
            ignore_eos=True,  # the project's stop tokens (they include eos) decide, as with hf
            detokenize=False,
        )
        for r in request["requests"]
    ]
    lora_request = LoRARequest("state", 1, lora) if lora else None
    began = time.perf_counter()
    outputs = llm.generate(prompts, params, lora_request=lora_request, use_tqdm=False)
    return {
        "outputs": [list(out.outputs[0].token_ids) for out in outputs],
        "start_seconds": start_seconds,
        "generate_seconds": time.perf_counter() - began,
        "vllm_version": vllm.__version__,
    }


def main(argv: list[str]) -> int:
    request_path, response_path = argv
    with open(request_path) as fh:
        request = json.load(fh)
    try:
        response = run(request)
        code = 0
    except BaseException as err:  # noqa: BLE001 - every failure is reported to the caller
        traceback.print_exc()
        response = {"error": classify(err), "message": f"{type(err).__name__}: {err}"}
        code = 3
    with open(response_path, "w") as fh:
        json.dump(response, fh)
    return code


if __name__ == "__main__":  # vLLM spawns worker processes: the engine starts only here
    sys.exit(main(sys.argv[1:]))
