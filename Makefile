# Two commands on a fresh machine:  `make reproduce`  (the main job)  and  `make test`.
# Both create or reuse the virtual environment .venv from environment.yml's pip list.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= reports/quick

.PHONY: reproduce test test-fast lint deadcode browser lab readme clean notebooks-full

$(STAMP): environment.yml pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	sed -n 's/^      - //p' environment.yml > $(VENV)/requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r $(VENV)/requirements.txt
	touch $(STAMP)

reproduce: $(STAMP)
	$(VENV)/bin/lrdlab reproduce --quick --out $(OUT)

browser:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null)

lint: $(STAMP)
	$(VENV)/bin/ruff check lrdlab tests tools
	$(PY) -m mypy

deadcode: $(STAMP)  # names nothing uses (tools/vulture_whitelist.py lists the ones used from outside the code)
	$(VENV)/bin/vulture lrdlab tools tests --min-confidence 60

test-fast: lint  # the quick tier: no `slow`, no `browser` tests (a few minutes on 2 cores)
	$(PY) -m pytest -q -m "not slow and not browser" --durations=25

test: lint deadcode browser  # everything, notebooks and the real-browser tests included
	$(PY) -m pytest -q --durations=25

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/ $$([ "$$(id -u)" = 0 ] && echo --allow-root)

readme: $(STAMP)  # rewrite the generated sections of README.md and docs/ from data/ (after `python -m tools.record ...`)
	$(PY) -m tools.readme

notebooks-full: $(STAMP)  # notebooks with QUICK=False, times merged into data/notebooks_full_times.json (long)
	$(PY) tests/run_notebooks_full.py $(if $(TIMEOUT),--timeout $(TIMEOUT)) $(NOTEBOOKS)

clean:
	rm -rf $(VENV) reports .pytest_cache
