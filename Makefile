PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RESTDECODE_HOME ?= $(HOME)/.cache/restdecode
export RESTDECODE_HOME
DEMO_STORE := $(RESTDECODE_HOME)/datastores/sharegpt-smollm2.rds

.PHONY: setup test demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q tests

demo: setup
	$(BIN)/restdecode fetch smollm2-135m-instruct sharegpt mtbench
	test -f $(DEMO_STORE) || $(BIN)/restdecode build-datastore --model smollm2-135m-instruct --source sharegpt --out $(DEMO_STORE)
	$(BIN)/restdecode datastore-info $(DEMO_STORE)
	$(BIN)/restdecode bench mtbench --limit 10 --max-new-tokens 128 --datastore $(DEMO_STORE) --out bench/out/demo

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
