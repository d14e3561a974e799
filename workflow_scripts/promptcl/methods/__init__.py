"""Continual-learning methods: how each stage's model is built and what its state is.

One module per method, registered in :data:`METHODS`:

* ``inclora``: a new LoRA per stage over the frozen LoRAs of earlier stages.
* ``olora``: IncLoRA + the O-LoRA orthogonality penalty (config section ``olora``).
* ``seqlora``: one LoRA trained on through all stages.
* ``replay``: seqlora whose stages also train on a sample of the earlier tasks (``replay``).
* ``ewc``: seqlora + elastic weight consolidation on the LoRA (config section ``ewc``).
* ``lwf``: inclora + distillation towards the state before the stage (``lwf``).
* ``agem``: seqlora + A-GEM's projection of each update against a memory of earlier tasks
  (``agem``).
* ``ilora``: I-LoRA's fast LoRA with a buffer of earlier tasks and a slow LoRA that follows it
  as a moving average (``ilora``).
* ``osf``: PEFT's orthogonal subspace fine-tuning, each stage's adapter merged before the next
  (``osf``; not a LoRA).
* ``single``: each task trained alone from the base model (a reference run).
* ``multitask``: all tasks trained jointly in one stage (the upper reference).

A method declares what the DAG needs (the adapters of the state before and after stage k, its
config sections), refuses launches it cannot run under, builds its stage model and may add a
weight penalty, a loss term, training-loop callbacks (:meth:`Method.training_hooks`) or extra
training data (:meth:`Method.extra_training_data`).
Adding one is one new module here, its line in :data:`METHODS` and the schema's enum. The DAG
imports this package without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from promptcl.methods.agem import AGEM
from promptcl.methods.base import CONFIG_KEY, ExtraData, Method, TrainingHooks
from promptcl.methods.ewc import EWC
from promptcl.methods.ilora import ILoRA
from promptcl.methods.inclora import IncLoRA
from promptcl.methods.lwf import LwF
from promptcl.methods.multitask import Multitask
from promptcl.methods.olora import OLoRA
from promptcl.methods.osf import OSF
from promptcl.methods.replay import Replay
from promptcl.methods.seqlora import SeqLoRA
from promptcl.methods.single import Single
from promptcl.train.specs import LoraSpec

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        IncLoRA(),
        OLoRA(),
        SeqLoRA(),
        Replay(),
        EWC(),
        LwF(),
        AGEM(),
        ILoRA(),
        OSF(),
        Single(),
        Multitask(),
    )
}

__all__ = ["METHODS", "ExtraData", "Method", "TrainingHooks", "build_stage_model", "method_of"]


def method_of(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"{CONFIG_KEY}: method '{name}' is not one of {sorted(METHODS)}")
    return METHODS[name]


def build_stage_model(
    model_dir: Path,
    previous_adapters: Sequence[Path],
    lora: LoraSpec,
    stage: int,
    precision: str = "fp32",
    trust_remote_code: bool = False,
    seed: int = 0,
    method: str = "inclora",
):
    """The model that trains stage k of ``method`` (see :meth:`Method.build_model`)."""
    return method_of(method).build_model(
        model_dir, previous_adapters, lora, stage, precision, trust_remote_code, seed
    )
