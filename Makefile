# Two entry points for a newcomer (see README): `make demo` and `make test`.
# Everything installs from this repository's own files into .venv. torch is installed first and
# exactly as torch==2.13.0: on this kind of machine that takes the local CPU wheel, while any other
# spec would pull multi-GB CUDA builds.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test test-slow bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The demo exports a bundle with BlazeFace: the weights from ../shared where that folder exists,
# else face-alignment's download.
BLAZEFACE := $(wildcard ../shared/weights/blazeface/blazeface.pth)

demo: setup
	$(BIN)/aunet demo $(if $(BLAZEFACE),--detector-weights $(BLAZEFACE),)

test: setup
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: setup
	$(BIN)/python -m pytest -m slow -q

bench: setup
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf artifacts data .prefect
