"""A draft model in the product (issue 16): the engine's default drafter with a draft model, the
``--draft-model`` flags, the refusal of a mismatched pair at load, and the bench methods that
need a draft model; tiny random models sharing a tokenizer, saved as Hugging Face directories."""

from __future__ import annotations

import json

import pytest

from benchmark.tiny import make_model_dir
from test_engine import FlatProfile
from tiny_models import BYTE_VOCAB, byte_tokenizer, tiny_model
from restdecode.cli import main
from restdecode.decode import generate
from restdecode.drafting import CombinedDrafter, DraftModelDrafter, NoDrafter
from restdecode.drafting.draft_planner import PricedDraftModel
from restdecode.engine import Engine
from restdecode.errors import ModelError, OptionsError, RestdecodeError

PROMPTS = ["abcabcabcabc", "The quick brown fox", "1 2 3 1 2 3 1"]


def save(model, directory):
    model.save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A 2-layer target, a 1-layer draft of the same byte tokenizer, and a model of another
    tokenizer (a trained BPE)."""
    root = tmp_path_factory.mktemp("draft-pair")
    return {"target": save(tiny_model("llama", vocab_size=BYTE_VOCAB), root / "target"),
            "draft": save(tiny_model("llama", vocab_size=BYTE_VOCAB, layers=1, seed=5),
                          root / "draft"),
            "other": make_model_dir(root / "other")}


def sources_of(drafter) -> list:
    """The drafters a (planned) merged drafter draws from."""
    drafter = getattr(drafter, "drafter", drafter)  # a PlannedDrafter wraps the merged one
    if isinstance(drafter, PricedDraftModel):
        return [drafter.draft, *getattr(drafter.sources, "drafters", [drafter.sources])]
    return list(getattr(drafter, "drafters", [drafter]))


@pytest.mark.parametrize("draft_is_target", [True, False], ids=["agreeing", "random"])
@pytest.mark.parametrize("budget", [6, None], ids=["fixed", "planned"])
def test_engine_with_a_draft_model_is_greedy_identical(draft_is_target, budget):
    target, tokenizer = tiny_model("llama", vocab_size=BYTE_VOCAB), byte_tokenizer()
    draft = target if draft_is_target else tiny_model("llama", vocab_size=BYTE_VOCAB, layers=1,
                                                      seed=5)
    engine = Engine(target, tokenizer, budget=budget, profile=FlatProfile(), draft_model=draft,
                    draft_tokenizer=tokenizer, draft_k=3, draft_profile=FlatProfile(0.001))
    # Planned: the draft model's forwards are priced too (PricedDraftModel)
    assert isinstance(engine.drafter, PricedDraftModel) == (budget is None)
    assert isinstance(sources_of(engine.drafter)[0], DraftModelDrafter)
    steps = tokens = 0
    for prompt in PROMPTS:
        plain = generate(target, tokenizer, prompt, drafter=NoDrafter(), max_new_tokens=24)
        got = engine.generate(prompt, max_new_tokens=24)
        assert got.token_ids == plain.token_ids
        steps, tokens = steps + got.stats.steps, tokens + sum(got.stats.accepted_per_step)
    if draft_is_target and budget is not None:
        assert tokens > 2.5 * steps  # the draft model's chains are accepted
    # Drafts without retrieval: the draft model alone, and the retrieval-only default.
    assert isinstance(engine.new_draft_model_drafter(), DraftModelDrafter)
    assert not any(isinstance(source, DraftModelDrafter)
                   for source in sources_of(engine.new_drafter(draft_model=False)))


def test_draft_shape_and_batched_llamacpp_drafts_are_checked():
    target, tokenizer = tiny_model("llama", vocab_size=BYTE_VOCAB), byte_tokenizer()
    with pytest.raises(OptionsError, match="--draft-k"):
        Engine(target, tokenizer, budget=4, draft_model=target, draft_k=0)
    with pytest.raises(ModelError, match="no draft model"):
        Engine(target, tokenizer, budget=4).new_draft_model_drafter()
    engine = Engine(target, tokenizer, budget=4, draft_model=target, draft_branches=2)
    engine.check_batched_drafting()  # transformers drafts: one session per row is fine
    merged = sources_of(engine.drafter)
    assert isinstance(engine.drafter, CombinedDrafter) and merged[0].branches == 2
    assert engine.drafter.budget == 4 + 4 * 2  # the draft model's nodes on top of the budget


def test_a_mismatched_pair_is_refused_before_either_model_loads(dirs, monkeypatch):
    monkeypatch.setattr("restdecode.models.load", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ModelError) as refused:
        Engine.load(str(dirs["target"]), draft_model=str(dirs["other"]))
    message = str(refused.value)
    assert str(dirs["target"]) in message and str(dirs["other"]) in message
    assert f"({BYTE_VOCAB} tokens)" in message and "vocabularies differ" in message


def test_a_mismatched_tokenizer_is_refused_by_the_engine(dirs):
    from restdecode.models import load_tokenizer

    target, tokenizer = tiny_model("llama", vocab_size=BYTE_VOCAB), byte_tokenizer()
    with pytest.raises(ModelError, match="vocabularies differ"):
        Engine(target, tokenizer, budget=4, draft_model=target,
               draft_tokenizer=load_tokenizer(dirs["other"]))


def test_generate_command_with_a_draft_model(dirs, capsys):
    def run(*extra: str) -> dict:
        status = main(["generate", "--model", str(dirs["target"]), "--prompt", PROMPTS[0],
                       "--max-new-tokens", "20", "--json", *extra])
        assert status == 0
        return json.loads(capsys.readouterr().out)

    plain = run("--no-draft")
    agreeing = run("--draft-model", str(dirs["target"]), "--budget", "4", "--draft-k", "5")
    assert agreeing["token_ids"] == plain["token_ids"]
    assert agreeing["stats"]["steps"] < len(plain["token_ids"]) / 2
    assert run("--draft-model", str(dirs["draft"]), "--budget", "4",
               "--draft-branches", "2")["token_ids"] == plain["token_ids"]

    status = main(["generate", "--model", str(dirs["target"]), "--prompt", "x",
                   "--draft-model", str(dirs["other"])])
    assert status == 1 and "vocabularies differ" in capsys.readouterr().err


@pytest.mark.parametrize("batch_size", ["1", "2"])
def test_check_lossless_with_a_draft_model(dirs, tmp_path, capsys, batch_size):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "prompt": p}) + "\n"
                               for i, p in enumerate(PROMPTS)))
    status = main(["check-lossless", "--model", str(dirs["target"]), "--prompts",
                   f"prompts:{prompts}", "--draft-model", str(dirs["draft"]), "--budget", "4",
                   "--max-new-tokens", "16", "--batch-size", batch_size, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0 and report["identical"] == report["total"] == len(PROMPTS)


def test_every_decoding_command_takes_the_draft_model_flags():
    from restdecode.cli import build_parser

    parser = build_parser()
    for command in ("generate --prompt x", "chat", "check-lossless", "bench mtbench", "serve"):
        args = parser.parse_args([*command.split(), "--draft-model", "d", "--draft-backend",
                                  "transformers", "--draft-k", "3", "--draft-branches", "2"])
        assert (args.draft_model, args.draft_backend, args.draft_k, args.draft_branches) == (
            "d", "transformers", 3, 2)


@pytest.fixture(scope="module")
def bench_dirs(tmp_path_factory):
    """The benchmark's tiny Llama (a trained BPE with a chat template) and a draft of it: the
    same weights, so that its drafts are accepted."""
    root = tmp_path_factory.mktemp("bench-pair")
    return make_model_dir(root / "target"), make_model_dir(root / "draft")


def test_draft_methods_run_and_report_identity(bench_dirs, tmp_path, monkeypatch):
    from benchmark.tiny import write_prompts
    from restdecode.benchmark import BenchConfig, resolve_config, run_benchmark
    from restdecode.benchmark.methods import DRAFT_METHODS

    from restdecode.backends import Backend

    # The engine profiles the target (a model) and the draft model (its backend): a draft
    # forward a twentieth of the target's, so that drafting pays.
    monkeypatch.setattr("restdecode.latency.profile_for", lambda model, **k: FlatProfile(
        0.0005 if isinstance(model, Backend) else 0.01))
    target, draft = bench_dirs
    prompts = f"prompts:{write_prompts(tmp_path / 'prompts.jsonl')}"
    config = BenchConfig(workload=prompts, out=tmp_path / "out", model=str(target),
                         max_new_tokens=16, progress=False, backend="transformers",
                         draft_model=str(draft), draft_k=3)
    assert resolve_config(config).methods[-3:] == list(DRAFT_METHODS)
    methods = ["hf-greedy", *DRAFT_METHODS]
    outcome = run_benchmark(BenchConfig(**{**config.__dict__, "methods": methods}))
    document = outcome.document
    assert document["settings"]["draft_model"] == {"model": str(draft), "backend": "auto",
                                                   "k": 3, "branches": 1}
    for method in methods:
        summary = document["summary"][method]
        assert summary["identical_fraction"] == 1.0, method
    for method in DRAFT_METHODS:  # the draft is the target: its drafts are accepted
        assert document["summary"][method]["mean_accepted"] > 1.5, method

    with pytest.raises(RestdecodeError, match="need a draft model: pass --draft-model"):
        run_benchmark(BenchConfig(workload=prompts, out=tmp_path / "none", model=str(target),
                                  methods=["hf-greedy", "draft-model"], progress=False))


def test_a_llama_cpp_draft_model_has_a_backend_of_its_own(tmp_path, monkeypatch):
    """Target and draft GGUFs (the same random f32 weights: drafts accepted) each on llama.cpp;
    their tokenizer comes from the (patched) de-quantized cache, one byte tokenizer."""
    pytest.importorskip("llama_cpp")
    import functools

    from tiny_gguf import write_tiny_llama_gguf
    from restdecode import models

    monkeypatch.setenv("RESTDECODE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(models, "_dequantize", lambda gguf: (
        tiny_model("llama", vocab_size=BYTE_VOCAB), byte_tokenizer()))
    monkeypatch.setattr(models, "load_llamacpp",
                        functools.partial(models.load_llamacpp, n_threads=1))
    target = write_tiny_llama_gguf(tmp_path / "target.gguf", vocab_size=BYTE_VOCAB)
    draft = write_tiny_llama_gguf(tmp_path / "draft.gguf", vocab_size=BYTE_VOCAB)
    engine = Engine.load(str(target), backend="llamacpp", draft_model=str(draft),
                         draft_backend="llamacpp", budget=4, draft_k=4)
    assert engine.draft_backend.name == "llamacpp" and engine.draft_backend is not engine.backend
    with pytest.raises(OptionsError, match="--draft-backend transformers"):
        engine.check_batched_drafting()
    ids = byte_tokenizer()("abcabc")["input_ids"]
    plain = generate(engine.model, engine.tokenizer, input_ids=ids, drafter=NoDrafter(),
                     max_new_tokens=24)
    got = engine.generate(input_ids=ids, max_new_tokens=24)
    assert got.token_ids == plain.token_ids
    assert got.stats.steps < len(plain.token_ids) / 2
