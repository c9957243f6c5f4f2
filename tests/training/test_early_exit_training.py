"""Training an early-exit head by self-distillation: the held-out loss falls and the agreement
with the model rises, checkpoints are written (and kept when a run is interrupted), --resume
continues the step count, and the CLI trains a head that `generate --draft-model` then uses
losslessly."""

from __future__ import annotations

import json

import pytest

from tiny_models import BYTE_VOCAB, byte_tokenizer, tiny_model
from restdecode.drafting.early_exit import load_exit_head
from restdecode.errors import ModelError
from restdecode.training.early_exit import TrainingSettings, train_early_exit


def documents(count: int = 60, seed: int = 0) -> list[str]:
    """Repetitive text the tiny model's next-token distributions can be learned on."""
    import random

    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "tea", "cup", "sun", "code"]
    return [" ".join(rng.choice(words) for _ in range(60)) for _ in range(count)]


def jsonl_data(directory) -> str:
    """``documents()`` written as a JSON-lines file: the ``--data`` spec that reads them."""
    data = directory / "data.jsonl"
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in documents()))
    return f"jsonl:{data}:text"


def settings(**overrides) -> TrainingSettings:
    values = dict(layer=2, minutes=5.0, window=32, batch=4, learning_rate=1e-2, held_out=8,
                  evaluate_every=10, max_steps=60, checkpoint_seconds=0.0)
    return TrainingSettings(**(values | overrides))


def model():
    return tiny_model("llama", vocab_size=BYTE_VOCAB, layers=4, init_std=0.1)


def test_distillation_raises_the_exits_agreement_with_the_model(tmp_path):
    target = model()
    report = train_early_exit(target, byte_tokenizer(), documents(), tmp_path / "exit",
                              settings(), progress=False)
    facts = json.loads((tmp_path / "exit" / "drafter.json").read_text())
    assert report.steps == 60 and facts["steps"] == 60 and facts["layer"] == 2
    assert report.agreement > report.untrained_agreement + 0.05
    assert facts["held_out_agreement"] == pytest.approx(report.agreement)
    loaded, _ = load_exit_head(target, tmp_path / "exit")  # the fingerprint matches
    assert loaded.exit_head.adapter.weight.abs().sum() > 0


def test_an_interrupted_run_keeps_its_checkpoint_and_resume_continues(tmp_path):
    target = model()

    def interrupt(step: int) -> None:
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_early_exit(target, byte_tokenizer(), documents(), tmp_path / "exit", settings(),
                         progress=False, on_step=interrupt)
    assert json.loads((tmp_path / "exit" / "drafter.json").read_text())["steps"] == 7
    report = train_early_exit(target, byte_tokenizer(), documents(), tmp_path / "exit",
                              settings(max_steps=5), resume=True, progress=False)
    assert report.steps == 12
    with pytest.raises(ModelError, match="layer 2, not 3"):
        train_early_exit(target, byte_tokenizer(), documents(), tmp_path / "exit",
                         settings(layer=3), resume=True, progress=False)


def test_too_little_text_and_a_bad_layer_are_refused(tmp_path):
    with pytest.raises(ModelError, match="not enough text"):
        train_early_exit(model(), byte_tokenizer(), ["short"], tmp_path / "x", settings(),
                         progress=False)
    with pytest.raises(ModelError, match="--layer must be in 1..3"):
        train_early_exit(model(), byte_tokenizer(), documents(), tmp_path / "x",
                         settings(layer=4), progress=False)


def test_the_cli_trains_a_head_that_generate_uses_losslessly(tmp_path, capsys):
    from test_engine_draft_model import save
    from restdecode.cli import main

    target_dir = save(model(), tmp_path / "target")
    assert main(["train-drafter", "--model", str(target_dir), "--data", jsonl_data(tmp_path),
                 "--out", str(tmp_path / "exit"), "--layer", "2", "--max-steps", "10",
                 "--window", "32", "-q"]) == 0
    assert "early exit after layer 2 of 4, 10 steps" in capsys.readouterr().out
    outputs = []
    for extra in (["--no-draft"], ["--draft-model", str(tmp_path / "exit"), "--budget", "6"]):
        assert main(["generate", "--model", str(target_dir), "--max-new-tokens", "20",
                     "--prompt", "alpha beta", "--json", *extra]) == 0
        outputs.append(json.loads(capsys.readouterr().out)["token_ids"])
    assert outputs[0] == outputs[1] and outputs[0]
    assert main(["train-drafter", "--model", str(target_dir), "--data", "nonsense",
                 "--out", str(tmp_path / "x")]) != 0
