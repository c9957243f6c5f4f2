"""Training draft heads by self-distillation: their held-out agreement with the model's own
guesses k tokens ahead rises above the untrained heads', the checkpoint loads onto the model
(and its vocabulary comes back with it), a resumed run keeps its shape, and the command line
trains them."""

from __future__ import annotations

import json

import pytest
import torch

from test_early_exit_training import documents, jsonl_data, model, settings
from tiny_models import byte_tokenizer
from restdecode.drafting.heads import load_heads
from restdecode.errors import ModelError
from restdecode.training.heads import train_heads


def test_distillation_raises_the_heads_agreement_with_the_model(tmp_path):
    target = model()
    report = train_heads(target, byte_tokenizer(), documents(), tmp_path / "heads",
                         settings(heads=2, vocabulary=48), progress=False)
    facts = json.loads((tmp_path / "heads" / "drafter.json").read_text())
    assert report.steps == 60 and facts["kind"] == "heads" and facts["heads"] == 2
    assert report.agreement > report.untrained_agreement + 0.05
    heads, _ = load_heads(target, tmp_path / "heads")
    assert heads.vocab_ids.numel() == 48 and heads.weight.abs().sum() > 0
    # The output rows are the model's embedding rows of the saved vocabulary.
    torch.testing.assert_close(heads.output_rows,
                               target.get_output_embeddings().weight[heads.vocab_ids])


def test_a_resumed_run_keeps_the_heads_shape(tmp_path):
    target = model()

    def interrupt(step: int) -> None:
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_heads(target, byte_tokenizer(), documents(), tmp_path / "heads",
                    settings(heads=2, vocabulary=48), progress=False, on_step=interrupt)
    before = load_heads(target, tmp_path / "heads")[0].vocab_ids
    report = train_heads(target, byte_tokenizer(), documents(seed=3), tmp_path / "heads",
                         settings(heads=2, vocabulary=48, max_steps=3), resume=True,
                         progress=False)
    assert report.steps == 7
    assert torch.equal(load_heads(target, tmp_path / "heads")[0].vocab_ids, before)
    with pytest.raises(ModelError, match="resume with --heads 2"):
        train_heads(target, byte_tokenizer(), documents(), tmp_path / "heads",
                    settings(heads=3, vocabulary=48), resume=True, progress=False)


@pytest.mark.parametrize("kind, trained", [("heads", "2 draft heads over 32 tokens"),
                                           ("chain", "a draft chain of 2 over 32 tokens")])
def test_the_cli_trains_draft_heads_that_generate_uses_losslessly(kind, trained, tmp_path,
                                                                   capsys):
    from test_engine_draft_model import save
    from restdecode.cli import main

    target_dir = save(model(), tmp_path / "target")
    data = jsonl_data(tmp_path)
    assert main(["train-drafter", "--model", str(target_dir), "--data", data,
                 "--out", str(tmp_path / "heads"), "--kind", kind, "--heads", "2",
                 "--vocabulary", "32", "--max-steps", "5", "--window", "32", "-q"]) == 0
    assert f"{trained}, 5 steps" in capsys.readouterr().out
    outputs = []
    for extra in (["--no-draft"], ["--draft-model", str(tmp_path / "heads"), "--budget", "6"],
                  ["--draft-model", str(tmp_path / "heads")]):  # fixed trees, then planned
        assert main(["generate", "--model", str(target_dir), "--max-new-tokens", "20",
                     "--prompt", "alpha beta", "--json", *extra]) == 0
        outputs.append(json.loads(capsys.readouterr().out)["token_ids"])
    assert outputs[0] == outputs[1] == outputs[2] and outputs[0]
    assert main(["train-drafter", "--model", str(target_dir), "--data", data,
                 "--out", str(tmp_path / "x"), "--kind", kind, "--heads", "0"]) == 2


@pytest.mark.parametrize("kind", ["heads", "chain"])
def test_the_bench_runs_draft_heads_alone_and_merged(kind, tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: benchmark.tiny
    from benchmark.tiny import write_prompts
    from test_engine import FlatProfile
    from test_engine_draft_model import save
    from restdecode.benchmark import BenchConfig, resolve_config, run_benchmark
    from restdecode.models import load

    monkeypatch.setattr("restdecode.latency.profile_for", lambda model, **k: FlatProfile(0.01))
    target_dir = save(model(), tmp_path / "target")
    loaded, tokenizer = load(str(target_dir))
    from restdecode.training.chain import train_chain

    train = train_heads if kind == "heads" else train_chain
    train(loaded, tokenizer, documents(), tmp_path / "heads",
          settings(heads=2, vocabulary=48, max_steps=5), progress=False)
    config = BenchConfig(workload=f"prompts:{write_prompts(tmp_path / 'prompts.jsonl')}",
                         out=tmp_path / "out", model=str(target_dir), max_new_tokens=16,
                         progress=False, backend="transformers",
                         draft_model=str(tmp_path / "heads"))
    methods = resolve_config(config).methods
    assert "hf-assisted" not in methods and methods[-2:] == ["draft-model",
                                                             "draft-model+retrieval"]
    outcome = run_benchmark(BenchConfig(**{**config.__dict__, "methods": [
        "hf-greedy", "draft-model", "draft-model+retrieval"]}))
    for method in ("draft-model", "draft-model+retrieval"):
        assert outcome.document["summary"][method]["identical_fraction"] == 1.0, method
