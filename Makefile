# Two commands: `make run` (set up, then the whole pipeline) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench lint examples clean

$(STAMP): pyproject.toml
	@echo "setting up $(VENV): installing digitrec with torch, ONNX Runtime and FastAPI (first time: a minute or two)..."
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --progress-bar on -e '.[train,serve,dev,feedback]'
	touch $(STAMP)
	@echo "$(VENV) is ready"

run: $(STAMP)
	$(BIN)/digitrec demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)  # a leading '-': a missed target (exit 3) is reported, the rest still runs
	-$(BIN)/digitrec bench train --seeds 3 --budget-s 150 --out bench-train.json --plot docs/bench.png
	$(BIN)/digitrec bench train --nproc 1,2 --out bench-train.json
	$(BIN)/digitrec bench realworld --per-kind 100 --out bench-realworld.json
	-$(BIN)/digitrec bench infer --batch 1024 --out bench-infer.json
	$(BIN)/digitrec bench serve --out bench-serve.json

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

examples: $(STAMP)
	$(BIN)/python -m digitrec.synth examples

# Every input must be read or refused in one line within 2 s of CPU; `make test` runs 3,000.
# `make fuzz FUZZ_COUNT=20000` for a short run; failing inputs land in out/fuzz-failures.
FUZZ_COUNT ?= 1000000
.PHONY: fuzz
fuzz: $(STAMP)
	$(BIN)/python tools/fuzz.py --count $(FUZZ_COUNT)

clean:
	rm -rf $(VENV) runs out bench*.json
