# Two commands on a fresh machine with Python 3.11:  `make demo`  and  `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test slow bench env clean

$(STAMP): setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test,tensorboard,radio]'
	touch $(STAMP)

env: $(STAMP)

# Builds the embedded radio-galaxy dataset (real FIRST cutouts shipped in the `firstgalaxydata`
# wheel, labelled by gluon_rcnn's rule labeller, not by humans), trains a small detector on CPU,
# evaluates it (against the Radio Galaxy Zoo volunteers' consensus labels where they exist, and says
# which labels each number uses), prints the AP tables and writes demo_out/predictions.png.
demo: $(STAMP)
	$(PY) scripts/demo.py --output demo_out

# The test suite (CI runs exactly this). pytest's exit code 5 (no tests) fails too.
test: $(STAMP)
	$(PY) -m pytest -q -ra --durations=15

# Long tests (overfit on coco128 and the like), minutes each on CPU.
slow: $(STAMP)
	$(PY) -m pytest -q -ra -m slow

bench: $(STAMP)
	$(PY) bench/inference_throughput.py
	$(PY) bench/train_throughput.py

clean:
	rm -rf $(VENV) demo_out build *.egg-info
