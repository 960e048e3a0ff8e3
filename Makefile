# Each target is one line a newcomer can read. Override VENV, TORCH or BENCH_DATA on the command line.
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
BENCH_DATA ?= $(if $(wildcard ../shared/dreambench/dataset),../shared/dreambench,data/dreambench)
export BENCH_DATA
BENCH = $(VENV)/bin/bench
RESULTS ?= results
WORKERS ?= 2

.PHONY: setup data run main-table test test-slow smoke tables report lint clean rehearsal

setup: $(VENV)/.installed          ## virtual environment with the project and its test tools

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV) && $(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(TORCH) && $(VENV)/bin/pip install -q -e ".[dev]" && touch $@

data: setup                         ## DreamBench at $(BENCH_DATA), cloned from its public repository if absent
	test -f $(BENCH_DATA)/dataset/prompts_and_classes.txt || $(BENCH) data download $(BENCH_DATA)

run: setup data                     ## the main job on the offline tiny profile: train, sample, score, table
	$(BENCH) run --method custom_diffusion --concepts all --profile tiny && $(BENCH) table main --profile tiny

main-table: setup data              ## every method of the main table on all 30 concepts (tiny: about 5 min on 2 CPU cores), then the table
	$(BENCH) run --method custom_diffusion --variant default,sd21 --concepts all --profile tiny --results $(RESULTS) --executor gpus --workers $(WORKERS)
	$(BENCH) run --method echodistill,textual_inversion,dreambooth,lora --concepts all --profile tiny --results $(RESULTS) --executor gpus --workers $(WORKERS)
	$(BENCH) run --method cones2,textboost,disenbooth,ip_adapter_tcd,ominicontrol --concepts all --profile tiny --results $(RESULTS) --executor gpus --workers $(WORKERS)
	$(BENCH) table main --profile tiny --results $(RESULTS)

test: setup                         ## the fast, offline, CPU-only test suite
	$(VENV)/bin/pytest -q

test-slow: setup                    ## the slow tier (learning checks, full sweeps)
	$(VENV)/bin/pytest -q -m slow

rehearsal: setup data              ## the whole paper plan on tiny through the CI workflow's commands, 16 shards, with faults (slow)
	$(VENV)/bin/python tools/rehearsal.py --concepts all --shards 16 --reference-workers 2 --data $(BENCH_DATA) --work $(RESULTS)/rehearsal

smoke: setup data                   ## two concepts end to end in about a minute
	$(BENCH) run --method custom_diffusion --concepts dog,teapot --profile tiny && $(BENCH) table main

lint: setup                         ## ruff (rules in pyproject.toml): pyflakes, pycodestyle, bugbear, pyupgrade
	$(VENV)/bin/ruff check .

tables: setup                       ## every table from the records under ./results
	$(BENCH) table main

clean:                              ## remove the environment and generated results (never results/README.md)
	rm -rf $(VENV) results/tiny results/paper results/paper-random
