"""The benchmark on the llama.cpp backend: llama-cpp-python's own loops as methods, llamacpp-greedy
as the baseline, and `restdecode bench --backend llamacpp` end to end, on a tiny random GGUF
(whose vocabulary matches the tiny BPE tokenizer of :mod:`benchmark.tiny`)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from benchmark.tiny import make_model_dir, write_prompts
from restdecode import models
from restdecode.benchmark import BenchConfig, resolve_config
from restdecode.benchmark.methods import (LLAMACPP_DEFAULT_METHODS, build_methods,
                                          default_methods)
from restdecode.cli import main
from tiny_gguf import write_tiny_llama_gguf

# A prompt whose greedy continuation on the attention-free GGUF soon cycles.
PROMPT = torch.tensor([[5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6, 7]])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def gguf(tiny_dir, tmp_path_factory) -> Path:
    """An attention-free tiny GGUF (its greedy output cycles: prompt lookup gets drafts
    accepted) over the tiny tokenizer's vocabulary."""
    from restdecode.models import load_tokenizer

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return write_tiny_llama_gguf(path, vocab_size=len(load_tokenizer(tiny_dir)), attention=False)


@pytest.fixture
def home(tiny_dir, tmp_path_factory, monkeypatch) -> Path:
    """A private RESTDECODE_HOME (shared by this module's tests) where the GGUF "de-quantizes"
    into the tiny transformers model and tokenizer: the tokenizer the bench encodes prompts
    with, and the hf-* methods' model (other random weights than the GGUF's). The llama.cpp
    backend gets one thread: on a busy machine, threads of a tiny model wait on each other for
    100s of milliseconds a token."""
    directory = tmp_path_factory.getbasetemp() / "llamacpp-bench-home"
    monkeypatch.setenv("RESTDECODE_HOME", str(directory))
    monkeypatch.setattr(models, "_dequantize", lambda gguf: models.load(tiny_dir))
    monkeypatch.setattr(models, "load_llamacpp",
                        functools.partial(models.load_llamacpp, n_threads=1))
    return directory


@pytest.fixture
def engine(gguf, home):
    pytest.importorskip("llama_cpp")
    from restdecode.engine import Engine

    return Engine.load(str(gguf), backend="llamacpp", draft=False)


def test_llamacpp_loops_give_plain_decodings_tokens(engine):
    greedy, lookup, plain = build_methods(
        ["llamacpp-greedy", "llamacpp-prompt-lookup", "plain"], engine)
    expected = plain.generate(PROMPT, 40).token_ids
    assert len(expected) == 40  # no end token: the lengths below are all max_new_tokens
    greedy_run = greedy.generate(PROMPT, 40)
    assert greedy_run.token_ids == expected
    assert greedy_run.accepted_per_step == [1] * 40
    lookup_run = lookup.generate(PROMPT, 40)
    assert lookup_run.token_ids == expected
    assert sum(lookup_run.accepted_per_step) == 40
    assert len(lookup_run.accepted_per_step) == len(lookup.llm.eval_lengths)  # one per forward
    assert max(lookup_run.accepted_per_step) > 1  # drafts from the cycle got accepted


def test_llamacpp_loop_prefills_every_generation_from_scratch(engine):
    """As the runner times it: a 1-token generation, then the full one of the same prompt,
    which must prefill again (no KV prefix reuse)."""
    (lookup,) = build_methods(["llamacpp-prompt-lookup"], engine)
    first = lookup.generate(PROMPT, 1)
    assert len(first.token_ids) == 1 and first.accepted_per_step == [1]
    full = lookup.generate(PROMPT, 20)
    assert full.token_ids[:1] == first.token_ids
    assert lookup.llm.eval_lengths[0] == 0


def test_llamacpp_loop_stops_at_an_end_token_and_keeps_it(engine):
    (greedy,) = build_methods(["llamacpp-greedy"], engine)
    tokens = greedy.generate(PROMPT, 20).token_ids
    stop = next(k for k in range(2, 20) if tokens[k] not in tokens[:k])
    greedy._is_end = lambda token: token == tokens[stop]
    run = greedy.generate(PROMPT, 20)
    assert run.token_ids == tokens[:stop + 1]
    assert sum(run.accepted_per_step) == stop + 1


def test_hf_methods_load_the_transformers_model_only_when_asked(engine, tiny_dir, monkeypatch):
    loads = []
    original = models.load

    def load(name):
        loads.append(name)
        return original(tiny_dir)

    monkeypatch.setattr("restdecode.models.load", load)
    build_methods(["llamacpp-greedy", "plain"], engine)
    assert loads == []
    hf_greedy, hf_lookup = build_methods(["hf-greedy", "hf-prompt-lookup"], engine)
    assert loads == [engine.name]  # once for both
    assert hf_greedy.model is hf_lookup.model


def test_bench_on_llamacpp_compares_with_llamacpp_greedy(gguf, home, tmp_path, capsys):
    pytest.importorskip("llama_cpp")
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "out"
    methods = ["llamacpp-greedy", "llamacpp-prompt-lookup", "plain", "hf-greedy"]
    status = main(["bench", f"prompts:{prompts}", "--model", str(gguf), "--backend", "llamacpp",
                   "--methods", ",".join(methods), "--max-new-tokens", "24", "--out", str(out),
                   "--no-progress"])
    assert status == 0, capsys.readouterr().err
    document = json.loads((out / "results.json").read_text())
    assert document["baseline"] == "llamacpp-greedy" and document["methods"] == methods
    assert document["settings"]["backend"] == "llamacpp"
    assert document["settings"]["llamacpp"]["n_threads"] == 1  # the backend's
    assert document["model"]["architecture"] == "llama" and document["model"]["gguf"] == str(gguf)

    rows = document["rows"]
    baseline = {row["prompt_id"]: row["token_ids"] for row in rows
                if row["method"] == "llamacpp-greedy"}
    for row in rows:
        assert sum(row["accepted_per_step"]) == row["new_tokens"] == len(row["token_ids"])
        assert row["identical_to_baseline"] is (row["token_ids"] == baseline[row["prompt_id"]])
        if row["method"] != "hf-greedy":
            assert row["identical_to_baseline"] is True
    # The hf-* methods run the transformers model: here other random weights than the GGUF's.
    summary = document["summary"]
    assert summary["hf-greedy"]["identical_fraction"] < 1
    assert summary["llamacpp-prompt-lookup"]["mean_accepted"] > 1
    seconds = {m: sum(r["decode_s"] for r in rows if r["method"] == m) for m in methods}
    for method in methods:
        decode = summary[method]["decode"]
        assert decode["speedup_vs_baseline"] == pytest.approx(
            seconds["llamacpp-greedy"] / seconds[method])
        assert decode["speedup_vs_hf_greedy"] == pytest.approx(
            seconds["hf-greedy"] / seconds[method])

    report = (out / "report.md").read_text()
    assert "on llama.cpp" in report and "baseline: `llamacpp-greedy`" in report
    assert "| vs llamacpp-greedy decode | vs llamacpp-greedy e2e | vs plain decode " \
           "| vs hf-greedy decode | vs llamacpp-prompt-lookup decode |" in report
    assert "prompts < 0.95x llamacpp-greedy" in report
    assert (out / "speedup_per_prompt.png").read_bytes()[:4] == b"\x89PNG"


def test_llamacpp_methods_need_a_gguf_model(tiny_dir, tmp_path, capsys):
    pytest.importorskip("llama_cpp")
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    status = main(["bench", f"prompts:{prompts}", "--model", str(tiny_dir), "--methods",
                   "plain,llamacpp-prompt-lookup", "--out", str(tmp_path / "out"),
                   "--no-progress"])
    assert status == 1
    error = capsys.readouterr().err
    assert "llamacpp-prompt-lookup run llama.cpp on the model's GGUF file" in error
    assert "not a GGUF model" in error and str(tiny_dir) in error


def test_llamacpp_methods_without_llama_cpp_python_name_the_install(gguf, tmp_path, capsys,
                                                                   monkeypatch):
    from restdecode.backends.llamacpp import INSTALL_HINT

    monkeypatch.setattr("restdecode.backends.llamacpp_available", lambda: False)
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    status = main(["bench", f"prompts:{prompts}", "--model", str(gguf), "--methods",
                   "llamacpp-greedy", "--out", str(tmp_path / "out"), "--no-progress"])
    assert status == 1
    assert INSTALL_HINT in capsys.readouterr().err


def test_compile_on_llamacpp_is_an_error(gguf, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    status = main(["bench", f"prompts:{prompts}", "--model", str(gguf), "--backend", "llamacpp",
                   "--compile", "--out", str(tmp_path / "out"), "--no-progress"])
    assert status == 1
    assert "transformers backend only" in capsys.readouterr().err


def test_default_methods_follow_the_backend(gguf):
    config = BenchConfig(workload="mtbench", out=Path("unused"), model=str(gguf))
    on_llamacpp = resolve_config(BenchConfig(**{**vars(config), "backend": "llamacpp"}))
    assert on_llamacpp.methods == list(LLAMACPP_DEFAULT_METHODS) == default_methods("llamacpp")
    assert on_llamacpp.methods[:3] == ["llamacpp-greedy", "hf-greedy", "llamacpp-prompt-lookup"]
    on_transformers = resolve_config(BenchConfig(**{**vars(config), "backend": "transformers"}))
    assert on_transformers.methods[:2] == ["hf-greedy", "hf-prompt-lookup"]
    named = resolve_config(BenchConfig(**{**vars(config), "methods": ["plain"]}))
    assert named.methods == ["plain"]


def test_prompt_lookup_runs_past_512_context_tokens(tmp_path):
    """llama-cpp-python sizes the logits buffer of a draft-model run by its logits_all argument:
    without it, any context beyond n_batch (512) tokens overflowed it."""
    pytest.importorskip("llama_cpp")
    from restdecode.benchmark.methods import LlamaCppGenerate

    path = write_tiny_llama_gguf(tmp_path / "long.gguf", vocab_size=64, context=2048,
                                 attention=False)
    lookup = LlamaCppGenerate("llamacpp-prompt-lookup", path, n_ctx=2048, n_threads=1,
                              prompt_lookup=True)
    prompt = torch.tensor([[5, 6, 7, 8, 9] * 120])  # 600 tokens
    run = lookup.generate(prompt, 24)
    assert len(run.token_ids) == 24 and sum(run.accepted_per_step) == 24
