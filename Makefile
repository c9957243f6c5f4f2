PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STORE := $(HOME)/.cache/restdecode/datastores/sharegpt-smollm2.rds

.PHONY: setup test demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q tests

demo: setup
	$(BIN)/restdecode fetch smollm2-135m-instruct sharegpt mtbench
	test -f $(DEMO_STORE) || $(BIN)/restdecode build-datastore --model smollm2-135m-instruct --source sharegpt --out $(DEMO_STORE)
	$(BIN)/restdecode datastore-info $(DEMO_STORE)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
