# Quick start targets. Both create .venv on first use; torch/torchvision are pinned to the builds this
# workplace keeps on local disk (pip takes them from there instead of downloading).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test clean

$(BIN)/sret: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/sret

setup: $(BIN)/sret

demo: setup
	$(BIN)/sret demo

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
