"""Generation options and chat messages: checked once, refused with a clear error, never used
silently; and the CLI turns each refusal into one line before loading any model."""

from __future__ import annotations

import json
import math

import pytest

from tiny_models import BYTE_VOCAB, byte_tokenizer, tiny_model
from restdecode.cli import main
from restdecode.decode import generate, stream
from restdecode.errors import OptionsError
from restdecode.options import GenerationOptions, check_messages

BAD_OPTIONS = [
    (dict(temperature=math.nan), "temperature"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=2.0), "top_p"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=math.nan), "top_p"),
    (dict(top_k=-3), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=True), "max_new_tokens"),
    (dict(seed=-5), "seed"),
    (dict(stop_strings=[3]), "stop_strings"),
]


@pytest.mark.parametrize("values, name", BAD_OPTIONS)
def test_bad_options_are_refused(values, name):
    with pytest.raises(OptionsError, match=name):
        GenerationOptions(**values)


def test_good_options_and_updates():
    options = GenerationOptions(temperature=0.7, top_p=0.9, top_k=5, stop_strings="END", seed=1)
    assert options.stop_strings == ("END",) and not options.greedy
    assert options.updated(temperature=0).greedy
    with pytest.raises(OptionsError, match="temperature"):
        options.updated(temperature=math.nan)
    with pytest.raises(OptionsError, match="unknown generation option"):
        options.updated(temprature=1.0)


@pytest.mark.parametrize("messages, pattern", [
    ([], "non-empty list"),
    ({"role": "user", "content": "hi"}, "non-empty list"),
    ([{"role": "user"}], '"role" and "content"'),
    ([{"role": "wizard", "content": "hi"}], "role 'wizard'"),
    ([{"role": "user", "content": 42}], "content must be text"),
    ([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "content must be text"),
])
def test_bad_messages_are_refused(messages, pattern):
    with pytest.raises(OptionsError, match=pattern):
        check_messages(messages)


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return tiny_model("llama", vocab_size=BYTE_VOCAB), byte_tokenizer()


def test_nan_temperature_no_longer_decodes_greedily(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(OptionsError, match="temperature"):
        generate(model, tokenizer, "abc", temperature=math.nan, max_new_tokens=4)
    with pytest.raises(OptionsError, match="temperature"):
        stream(model, tokenizer, "abc", options=GenerationOptions(), temperature=-1.0)


def test_messages_are_checked_by_the_python_api(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(OptionsError, match="content must be text"):
        generate(model, tokenizer, messages=[{"role": "user", "content": 7}], max_new_tokens=4)


def test_stream_hands_over_its_result(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    pieces = stream(model, tokenizer, "abcabc", max_new_tokens=6)
    text = "".join(pieces)
    assert pieces.result is not None and pieces.result.text == text
    assert pieces.result.stats.new_tokens == 6


def cli_error(capsys, argv: list[str], *fragments: str) -> None:
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


# No --model is loaded: every one of these is refused first (a missing model would fail later).
@pytest.mark.parametrize("extra, fragments", [
    (["--prompt", "x", "--temperature", "0.5", "--top-p", "2"], ("top_p",)),
    (["--prompt", "x", "--temperature", "0.5", "--top-k", "-3"], ("top_k",)),
    (["--prompt", "x", "--temperature", "nan"], ("temperature", "NaN")),
    (["--prompt", "x", "--temperature", "-1"], ("temperature",)),
    (["--prompt", "x", "--max-new-tokens", "-2"], ("max_new_tokens",)),
    (["--messages", '[{"role": "user", "content": 5}]'], ("--messages", "content must be text")),
    (["--messages", '[{"role": "robot", "content": "hi"}]'], ("--messages", "role 'robot'")),
    (["--messages", "[" * 100_000], ("--messages",)),
])
def test_generate_refuses_bad_input_in_one_line(capsys, tmp_path, extra, fragments):
    cli_error(capsys, ["generate", "--model", str(tmp_path / "no-such-model"), *extra], *fragments)


@pytest.mark.parametrize("lines, fragment", [
    (['["a", "list"]'], "got a JSON list"),
    (['"a string"'], "got a JSON str"),
    (['{"messages": [{"role": "user", "content": 3}]}'], "content must be text"),
    (['{"prompt": 5}'], 'expected {"prompt"'),
    (["[" * 100_000], "nested too deeply"),
])
@pytest.mark.parametrize("command", ["check-lossless", "bench"])
def test_prompt_files_with_wrong_lines_are_refused(capsys, tmp_path, lines, fragment, command):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(lines) + "\n")
    where = {"check-lossless": ["--prompts", f"prompts:{prompts}"],
             "bench": [f"prompts:{prompts}", "--methods", "hf-greedy,plain",
                       "--out", str(tmp_path / "out")]}[command]
    cli_error(capsys, [command, *where, "--model", str(tmp_path / "no-such-model")],
              f"{prompts}:1", fragment)


def test_prompt_file_that_is_not_utf8(capsys, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(json.dumps({"prompt": "caf"}).encode()[:-2] + b'\xe9"}\n')
    cli_error(capsys, ["check-lossless", "--prompts", f"prompts:{prompts}"], "UTF-8")
