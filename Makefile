# Two entry points for a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; an unpinned torch pulls several GB of CUDA wheels.
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo test browser bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: install
	$(VENV)/bin/rushes run manifests/demo.yaml

test: install browser
	$(VENV)/bin/python -m pytest -q --durations=15

# The report's tests open it in Debian's chromium (Playwright cannot download its own browser here).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } || \
	  echo "make: chromium could not be installed; the report's browser tests will be skipped"

bench: install
	$(PY) bench/stage_costs.py

clean:
	rm -rf output .pytest_cache
