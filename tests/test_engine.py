"""The engine: one set-up for every entry point (model, datastore checks, default drafter)."""

from __future__ import annotations

import pytest

from tiny_models import BYTE_VOCAB, byte_tokenizer, tiny_model
from restdecode.datastore import Datastore, build_from_token_documents
from restdecode.decode import generate
from restdecode.drafting import NoDrafter, PlannedDrafter
from restdecode.engine import Engine
from restdecode.errors import DatastoreError, OptionsError


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return tiny_model("llama", vocab_size=BYTE_VOCAB), byte_tokenizer()


def store_of(path, vocab_size: int) -> Datastore:
    documents = [[(7 * i + j) % vocab_size for j in range(12)] for i in range(6)]
    return Datastore.open(build_from_token_documents(documents, path, vocab_size=vocab_size))


def test_a_datastore_wider_than_the_model_is_refused(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(DatastoreError, match=f"embeds only {BYTE_VOCAB}"):
        Engine(model, tokenizer, datastore=store_of(tmp_path / "wide.rds", BYTE_VOCAB + 1),
               budget=8)
    Engine(model, tokenizer, datastore=store_of(tmp_path / "fits.rds", BYTE_VOCAB), budget=8)


def test_engine_generation_is_the_loops_and_lossless(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    engine = Engine(model, tokenizer, datastore=store_of(tmp_path / "s.rds", BYTE_VOCAB), budget=8)
    plain = generate(model, tokenizer, "abcabcabc", drafter=NoDrafter(), max_new_tokens=20)
    drafted = engine.generate("abcabcabc", max_new_tokens=20)
    assert drafted.token_ids == plain.token_ids
    assert "".join(engine.stream("abcabcabc", max_new_tokens=20)) == plain.text


def test_drafter_choices(model_and_tokenizer, tmp_path, monkeypatch):
    model, tokenizer = model_and_tokenizer
    assert Engine(model, tokenizer, draft=False).drafter is None
    assert Engine(model, tokenizer, draft=False, memory=True).memory is None
    assert not isinstance(Engine(model, tokenizer, budget=4).drafter, PlannedDrafter)
    with pytest.raises(OptionsError, match="budget"):
        Engine(model, tokenizer, budget=-1)
    measured = []
    monkeypatch.setattr("restdecode.latency.profile_for",
                        lambda model, progress=True: measured.append(model) or FlatProfile())
    engine = Engine(model, tokenizer, memory=True)
    assert isinstance(engine.drafter, PlannedDrafter) and measured == [model]
    assert engine.memory is not None and engine.new_drafter() is not engine.drafter
    assert measured == [model]  # measured once per engine


class FlatProfile:
    def __init__(self, seconds: float = 0.01) -> None:
        self.seconds = seconds

    def predict(self, widths, cache_length):
        import numpy as np

        return np.full(np.shape(widths), self.seconds)


def test_a_missing_datastore_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.setattr("restdecode.models.load", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(DatastoreError, match="does not exist"):
        Engine.load("smollm2-135m-instruct", datastore=tmp_path / "missing.rds")


def test_the_drafters_of_one_engine_share_what_the_planner_learned(model_and_tokenizer):
    """A server builds a drafter per request: each starts from the acceptance evidence of the
    requests before it, unless given a calibration of its own."""
    from restdecode.drafting.planner import default_calibration

    model, tokenizer = model_and_tokenizer
    engine = Engine(model, tokenizer, profile=FlatProfile())
    engine.generate("abcabcabcabc", max_new_tokens=24, drafter=engine.new_drafter())
    learned = engine.calibration.trials.sum()
    assert learned > 0
    assert engine.new_drafter().calibration is engine.calibration
    apart = default_calibration()
    engine.generate("abcabcabcabc", max_new_tokens=24, drafter=engine.new_drafter(calibration=apart))
    assert apart.trials.sum() > 0 and engine.calibration.trials.sum() == learned


def test_new_drafters_keep_the_engines_fixed_budget(model_and_tokenizer, monkeypatch):
    """A server's per-request drafters are sized as the engine was asked (--budget), never by
    a latency profile measured behind the user's back."""
    model, tokenizer = model_and_tokenizer
    monkeypatch.setattr("restdecode.latency.profile_for",
                        lambda *args, **kwargs: pytest.fail("profile measured"))
    engine = Engine(model, tokenizer, budget=4)
    assert not isinstance(engine.new_drafter(), PlannedDrafter)
    assert engine.new_drafter().budget == 4
