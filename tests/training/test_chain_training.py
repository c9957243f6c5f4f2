"""Training a draft chain by self-distillation: its held-out agreement with the model's own
guesses rises above the untrained chain's and above draft heads trained alike (the chain reads
the tokens it guesses after), and a resumed run keeps its shape. (test_heads_training runs the
command line and the benchmark on a chain too.)"""

from __future__ import annotations

import json

import pytest

from test_early_exit_training import documents, jsonl_data, model, settings
from tiny_models import byte_tokenizer
from restdecode.drafting.chain import load_chain
from restdecode.errors import ModelError
from restdecode.training.chain import train_chain
from restdecode.training.heads import train_heads


def test_distillation_raises_the_chains_agreement_above_the_heads(tmp_path):
    target = model()
    report = train_chain(target, byte_tokenizer(), documents(), tmp_path / "chain",
                         settings(heads=2, vocabulary=48), progress=False)
    heads = train_heads(target, byte_tokenizer(), documents(), tmp_path / "heads",
                        settings(heads=2, vocabulary=48), progress=False)
    facts = json.loads((tmp_path / "chain" / "drafter.json").read_text())
    assert report.steps == 60 and facts["kind"] == "chain" and facts["heads"] == 2
    assert report.agreement > report.untrained_agreement + 0.05
    assert report.agreement > heads.agreement
    chain, _ = load_chain(target, tmp_path / "chain")
    assert chain.vocab_ids.numel() == 48 and chain.weight.abs().sum() > 0


def test_a_resumed_run_keeps_the_chains_shape(tmp_path):
    target = model()
    train_chain(target, byte_tokenizer(), documents(), tmp_path / "chain",
                settings(heads=2, vocabulary=48, max_steps=4), progress=False)
    report = train_chain(target, byte_tokenizer(), documents(seed=3), tmp_path / "chain",
                         settings(heads=2, vocabulary=48, max_steps=3), resume=True,
                         progress=False)
    assert report.steps == 7
    with pytest.raises(ModelError, match="resume with --heads 2"):
        train_chain(target, byte_tokenizer(), documents(), tmp_path / "chain",
                    settings(heads=3, vocabulary=48), resume=True, progress=False)
