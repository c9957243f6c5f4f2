"""Test-wide settings; tiny-model helpers live in tiny_models.py (a unique module name, so that
`from tiny_models import ...` never resolves to another directory's conftest)."""

import pytest
import torch
from tiny_models import TINY_ARCHITECTURES

# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine thread hand-offs
# cost milliseconds per attention call: one thread keeps the tests fast and the machine shared.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _profiles_in_a_temporary_dir(tmp_path_factory, monkeypatch):
    """Latency profiles of tiny test models go to one directory per test session, never into
    the user's cache (the real models and datastores there are still used)."""
    directory = tmp_path_factory.getbasetemp() / "profiles"
    monkeypatch.setattr("restdecode.latency.profiles_dir", lambda: directory)


@pytest.fixture(autouse=True)
def _no_head_padding_unless_asked(monkeypatch):
    """Whether a tiny model's head gets padded would depend on microsecond timings: off, so
    tests run alike everywhere; tests/test_head.py turns it on with fixed tables."""
    monkeypatch.setenv("RESTDECODE_HEAD_PADDING", "0")


@pytest.fixture(params=TINY_ARCHITECTURES)
def arch(request) -> str:
    """Each tiny architecture in turn: Llama, Qwen2, Gemma 3."""
    return request.param
