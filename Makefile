PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
PIP_TOOLS := pip-tools==7.6.2
RESTDECODE_HOME ?= $(HOME)/.cache/restdecode
export RESTDECODE_HOME
DEMO_STORE := $(RESTDECODE_HOME)/datastores/sharegpt-smollm2.rds

.PHONY: setup test test-latest lock demo clean

setup: $(STAMP)

# Exactly the locked versions (every dependency, hashes checked), then the project itself.
# llama-cpp-python (the llama.cpp backend) goes last and may fail alone: it compiles llama.cpp
# from source on first install, and without it the transformers backend still works.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	awk '/^[^ #]/ { skip = /^llama-cpp-python==/ } !skip' $(LOCK) > $(VENV)/core.lock
	$(BIN)/pip install -q --require-hashes -r $(VENV)/core.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || echo "building llama-cpp-python (the llama.cpp backend): compiling llama.cpp takes about 5-15 minutes on 2 cores, once (pip caches the wheel) ..."
	$(BIN)/pip install -q --require-hashes -r $(LOCK) || echo "WARNING: llama-cpp-python did not install (see pip's error above): the llama.cpp backend is unavailable, the transformers backend works"
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q tests

# Regenerate the lock from pyproject.toml: new dependencies get the newest allowed version, the
# others keep their pins (`make lock LOCK_ARGS=--upgrade` moves everything to the newest).
lock:
	test -x .venv-lock/bin/pip-compile || ($(PY) -m venv .venv-lock && .venv-lock/bin/pip install -q $(PIP_TOOLS))
	.venv-lock/bin/pip-compile -q --generate-hashes --allow-unsafe --extra test --extra llamacpp --strip-extras \
		--no-emit-index-url --no-emit-find-links $(LOCK_ARGS) -o $(LOCK) pyproject.toml

# The suite against the newest releases pyproject.toml allows, in a throwaway venv (not in CI).
test-latest:
	rm -rf .venv-latest
	$(PY) -m venv .venv-latest
	.venv-latest/bin/pip install -q torch==2.13.0
	.venv-latest/bin/pip install -q --upgrade --upgrade-strategy eager -e '.[test]'
	.venv-latest/bin/pip list 2>/dev/null | grep -i -E '^(transformers|tokenizers|numpy|numba|accelerate|gguf) '
	.venv-latest/bin/python -m pytest -q tests
	rm -rf .venv-latest

demo: setup
	$(BIN)/restdecode fetch smollm2-135m-instruct sharegpt mtbench
	test -f $(DEMO_STORE) || $(BIN)/restdecode build-datastore --model smollm2-135m-instruct --source sharegpt --out $(DEMO_STORE)
	$(BIN)/restdecode datastore-info $(DEMO_STORE)
	$(BIN)/restdecode bench mtbench --limit 10 --max-new-tokens 128 --datastore $(DEMO_STORE) --out bench/out/demo

clean:
	rm -rf $(VENV) .venv-lock .venv-latest build *.egg-info src/*.egg-info
