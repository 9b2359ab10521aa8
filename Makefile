# steinsplat: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo fit-demo test bench clean

WEB_STAMP := .web/node_modules/.installed

setup: $(VENV)/.installed $(WEB_STAMP)

$(VENV)/.installed: pyproject.toml scripts/system-deps.sh
	bash scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,ray,viewer]"
	touch $@

# Spark, three.js and splat-transform for tests/test_web_formats.py (pinned in .web/package-lock.json)
$(WEB_STAMP): .web/package.json .web/package-lock.json scripts/web-deps.sh
	bash scripts/web-deps.sh
	if [ -d .web/node_modules ]; then touch $@; fi

demo: setup
	$(BIN)/steinsplat "a red cube" --out runs/demo/a-red-cube.ply --mesh runs/demo/a-red-cube.glb --video runs/demo/a-red-cube.gif

fit-demo: setup
	$(BIN)/steinsplat fit-demo --out runs/fit-demo

test: setup
	$(BIN)/python -m pytest -q --durations=15

bench: setup
	$(BIN)/python benchmarks/render_speed.py
	$(BIN)/python benchmarks/fit_quality.py
	$(BIN)/python benchmarks/guidance_variance.py

clean:
	rm -rf runs .pytest_cache
