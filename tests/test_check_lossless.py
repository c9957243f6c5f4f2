"""The check-lossless and generate commands, end to end on a tiny model saved as an HF directory."""

from __future__ import annotations

import json

import pytest
import torch

from tiny_models import BYTE_VOCAB, byte_tokenizer, tiny_model
from restdecode.cli import main
from restdecode.cli.check_lossless import first_difference, top2_logit_gap


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", vocab_size=BYTE_VOCAB).save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    records = [{"id": "repeat", "prompt": "abc abc abc abc abc abc"},
               {"id": "chat", "messages": [{"role": "user", "content": "Count: 1 2 3 1 2 3 1 2"}]},
               {"id": "plain", "prompt": "The quick brown fox"}]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_check_lossless_reports_identical_outputs_as_json(model_dir, prompts_file, capsys):
    status = main(["check-lossless", "--model", str(model_dir), "--prompts", f"prompts:{prompts_file}",
                   "--max-new-tokens", "24", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0
    assert report["identical"] == report["total"] == 3 and report["differing"] == []


def test_check_lossless_decodes_rows_of_a_batch(model_dir, prompts_file, capsys):
    status = main(["check-lossless", "--model", str(model_dir), "--prompts", f"prompts:{prompts_file}",
                   "--max-new-tokens", "24", "--batch-size", "2", "--budget", "6", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0 and report["batch_size"] == 2
    assert report["identical"] == report["total"] == 3


def test_check_lossless_through_the_compiled_forward(model_dir, prompts_file, capsys):
    status = main(["check-lossless", "--model", str(model_dir), "--prompts", f"prompts:{prompts_file}",
                   "--max-new-tokens", "24", "--json", "--compile", "--budget", "8"])
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert status == 0 and "compiled in" in captured.err
    assert report["identical"] == report["total"] == 3  # fixed 8-node trees: masked forwards


def test_check_lossless_limit_and_text_output(model_dir, prompts_file, capsys):
    status = main(["check-lossless", "--model", str(model_dir), "--prompts", f"prompts:{prompts_file}",
                   "--limit", "1", "--max-new-tokens", "8"])
    assert status == 0
    assert capsys.readouterr().out.startswith("1/1 outputs token-identical")


def test_generate_command_prints_text_and_stats(model_dir, capsys):
    status = main(["generate", "--model", str(model_dir), "--prompt", "abc abc abc",
                   "--max-new-tokens", "12", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert status == 0 and len(result["token_ids"]) == 12
    assert result["stats"]["new_tokens"] == 12 and "time_verify" in result["stats"]
    status = main(["generate", "--model", str(model_dir), "--messages",
                   '[{"role": "user", "content": "hi"}]', "--max-new-tokens", "5"])
    captured = capsys.readouterr()
    assert status == 0 and "5 tokens in" in captured.err


def test_generate_rejects_malformed_messages(model_dir, capsys):
    status = main(["generate", "--model", str(model_dir), "--messages", '{"role": "user"}'])
    assert status == 1 and "--messages" in capsys.readouterr().err


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2


def test_top2_logit_gap_is_the_margin_of_the_best_token():
    """Measured as plain decoding saw it (prompt prefill, then one token per forward)."""
    from restdecode.backends import as_backend

    model = tiny_model("qwen2", vocab_size=BYTE_VOCAB)
    with torch.no_grad():
        logits = model(torch.tensor([[5, 6, 7, 8]])).logits[0, -1]
    top = torch.topk(logits, 2).values
    gap = top2_logit_gap(as_backend(model), [5, 6], [7, 8])
    assert gap == pytest.approx(float(top[0] - top[1]), abs=1e-5)


@pytest.mark.assets
def test_check_lossless_on_llama_cpp_f32_is_identical_to_its_own_greedy(capsys):
    pytest.importorskip("llama_cpp")
    status = main(["check-lossless", "--backend", "llamacpp", "--model",
                   "smollm2-135m-instruct:f32", "--limit", "2", "--max-new-tokens", "32",
                   "--budget", "6", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0 and report["backend"] == "llamacpp"
    assert report["identical"] == report["total"] == 2
