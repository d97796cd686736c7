# Two commands on a fresh machine:  `make reproduce`  (the main job)  and  `make test`.
# Both create or reuse the virtual environment .venv from environment.yml's pip list.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= reports/quick

.PHONY: reproduce test lint browser lab readme clean notebooks-full

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

test: $(STAMP) browser
	$(VENV)/bin/ruff check lrdlab tests tools
	$(PY) -m mypy
	$(PY) -m pytest -q

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/ $$([ "$$(id -u)" = 0 ] && echo --allow-root)

readme: $(STAMP)  # rewrite the generated sections of README.md and docs/ from data/ (after `python -m tools.record ...`)
	$(PY) -m tools.readme

notebooks-full: $(STAMP)  # notebooks with QUICK=False, times merged into data/notebooks_full_times.json (long)
	$(PY) tests/run_notebooks_full.py $(if $(TIMEOUT),--timeout $(TIMEOUT)) $(NOTEBOOKS)

clean:
	rm -rf $(VENV) reports .pytest_cache
