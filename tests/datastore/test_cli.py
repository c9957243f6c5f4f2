"""`restdecode build-datastore` and `restdecode datastore-info` from the command line."""

from __future__ import annotations

import json

import pytest

from restdecode.cli import main


@pytest.mark.assets
def test_build_then_info(tmp_path, capsys):
    from restdecode.models import load_tokenizer

    texts = [f"Document number {i} says hello." for i in range(5)]
    expected_tokens = sum(len(load_tokenizer("smollm2-135m-instruct", quiet=True)(text)["input_ids"])
                          for text in texts)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"t": text}) + "\n" for text in texts))
    out = tmp_path / "s.rds"
    assert main(["build-datastore", "--model", "smollm2-135m-instruct", "--source", f"jsonl:{corpus}:t",
                 "--out", str(out), "--quiet"]) == 0
    assert f"{expected_tokens} tokens in 5 documents" in capsys.readouterr().out
    assert main(["datastore-info", str(out), "--verify", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["header"]["num_tokens"] == expected_tokens and facts["checksums"] == "ok"
    assert facts["file_bytes"] == out.stat().st_size
    assert main(["datastore-info", str(out)]) == 0
    assert "stored as u16" in capsys.readouterr().out


def test_errors_are_messages_not_tracebacks(tmp_path, capsys):
    damaged = tmp_path / "bad.rds"
    damaged.write_bytes(b"garbage, not a datastore")
    assert main(["datastore-info", str(damaged)]) == 1
    assert f"{damaged} is not a restdecode datastore" in capsys.readouterr().err
    assert main(["build-datastore", "--model", "x", "--source", "nope", "--out", str(tmp_path / "o"),
                 "--workers", "0"]) == 2
