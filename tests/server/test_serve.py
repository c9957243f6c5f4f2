"""`restdecode serve` live on 127.0.0.1: the real openai client, bad requests, concurrency,
disconnects, auth, and the README's examples."""

from __future__ import annotations

import asyncio
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import SERVED_NAME

PROMPTS = ["the quick brown fox", "def add(a, b):", "hello, how are you today?",
           "retrieval finds continuations", "for i in range(10):", "speculative decoding"]


def test_chat_and_completions_match_generate_through_the_openai_client(open_server, reference):
    client = openai.OpenAI(base_url=open_server.url + "/v1", api_key="unused")
    messages = [{"role": "user", "content": "hello, how are you today?"}]
    expected = reference(messages=messages, max_tokens=40)

    whole = client.chat.completions.create(model=SERVED_NAME, messages=messages, max_tokens=40,
                                           temperature=0)
    assert whole.choices[0].message.content == expected.text
    assert whole.model_extra["restdecode"]["completion_token_ids"] == expected.token_ids
    assert whole.usage.completion_tokens == len(expected.token_ids)
    assert whole.usage.prompt_tokens == expected.stats.prompt_tokens
    assert whole.choices[0].finish_reason == ("stop" if expected.stats.stop_reason == "eos"
                                              else "length")

    chunks = list(client.chat.completions.create(
        model=SERVED_NAME, messages=messages, max_tokens=40, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(
        expected.token_ids)
    final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    assert final.model_extra["restdecode"]["completion_token_ids"] == expected.token_ids
    steps = final.model_extra["restdecode"]["steps"]
    deltas = [c for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert len(deltas) <= steps + 2  # one chunk per decoding step (and the prefill's token)

    prompt = "the quick brown fox"
    expected = reference(prompt=prompt, max_tokens=30)
    text = client.completions.create(model=SERVED_NAME, prompt=prompt, max_tokens=30,
                                     temperature=0)
    assert text.choices[0].text == expected.text
    assert text.model_extra["restdecode"]["completion_token_ids"] == expected.token_ids
    streamed = client.completions.create(model=SERVED_NAME, prompt=prompt, max_tokens=30,
                                         temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == expected.text


def test_stop_sequences_are_cut_out_of_the_text_as_openai_does(open_server, reference):
    client = openai.OpenAI(base_url=open_server.url + "/v1", api_key="unused")
    prompt = "def add(a, b):"
    full = reference(prompt=prompt, max_tokens=30).text
    stop = full[8:11]
    assert len(stop) == 3  # the stop text occurs mid-answer
    cut = full[:full.find(stop)]
    whole = client.completions.create(model=SERVED_NAME, prompt=prompt, max_tokens=30,
                                      temperature=0, stop=[stop])
    assert whole.choices[0].text == cut and whole.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=SERVED_NAME, prompt=prompt, max_tokens=30,
                                         temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut


def test_models_health_and_metrics(open_server):
    models = openai.OpenAI(base_url=open_server.url + "/v1", api_key="x").models.list()
    assert [m.id for m in models.data] == [SERVED_NAME]
    health = open_server.health()
    assert health["status"] == "ok" and health["queue_depth"] == 0
    text = httpx.get(open_server.url + "/metrics").text
    for name in ("restdecode_requests_total", "restdecode_generated_tokens_total",
                 "restdecode_tokens_per_step_bucket", "restdecode_draft_seconds_total",
                 "restdecode_verify_seconds_total", "restdecode_queue_depth",
                 "restdecode_time_to_first_token_seconds_bucket"):
        assert name in text


def _malformed_requests(rng: random.Random, count: int) -> list[tuple[str, dict, bytes]]:
    """(path, headers, body) of ``count`` requests that must each get a 4xx."""
    chat = {"model": SERVED_NAME, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4}
    completion = {"model": SERVED_NAME, "prompt": "hi", "max_tokens": 4}
    invalid = {
        "model": [1, [], {}, "another-model", ""],
        "messages": [[], "hi", [1], [{"role": "user"}], [{"role": "wizard", "content": "x"}],
                     [{"role": "user", "content": 1}], {},
                     [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]],
        "prompt": [1, [], ["a", "b"], "", {}],
        "max_tokens": [-1, 0, 1.5, "10", True, 10 ** 9, 10 ** 30],
        "temperature": [-0.1, 2.5, "hot", [], float("nan"), float("inf")],
        "top_p": [0, -1, 1.5, "x"],
        "seed": [-5, 1.5, "x"],
        "stop": [1, [1], ["a", "b", "c", "d", "e"], {}],
        "stream": ["yes", 1, []],
        "stream_options": [{"include_usage": True}, {"x": 1}, "y"],
        "n": [2, 0, "1"],
        "logprobs": [True],
        "user": [1, {}],
        "unknown_field": [1, "x"],
    }
    requests = []
    for _ in range(count):
        kind = rng.random()
        path = rng.choice(["/v1/chat/completions", "/v1/completions"])
        base = dict(chat if path.endswith("chat/completions") else completion)
        headers = {"Content-Type": "application/json"}
        if kind < 0.1:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        elif kind < 0.15:
            body = json.dumps(base).encode()[:rng.randrange(1, 20)]
        elif kind < 0.2:
            body = json.dumps(rng.choice([[], "text", 3, None, [base]])).encode()
        elif kind < 0.23:
            body = b"[" * 50_000
        elif kind < 0.26:
            body = json.dumps(base | {"messages": "x" * 3_000_000}).encode()
        else:
            field = rng.choice([f for f in invalid if f != ("prompt" if "messages" in base
                                                            else "messages")])
            if field == "stream_options" and rng.random() < 0.5:
                base["stream"] = True
                value = rng.choice(invalid[field][1:])
            else:
                value = rng.choice(invalid[field])
            base[field] = value
            if rng.random() < 0.1:
                del base["model"]
            body = json.dumps(base).encode()
        requests.append((path, headers, body))
    return requests


def test_two_hundred_malformed_requests_get_4xx_with_openai_errors(open_server):
    rng = random.Random(20261125)
    with httpx.Client(base_url=open_server.url, timeout=30) as http:
        for path, headers, body in _malformed_requests(rng, 200):
            response = http.post(path, content=body, headers=headers)
            assert 400 <= response.status_code < 500, (path, body[:200], response.text)
            error = response.json()["error"]
            assert isinstance(error["message"], str) and error["message"]
            assert set(error) == {"message", "type", "param", "code"}
        assert http.get("/v1/chat/completions").status_code == 405
        assert http.get("/health").json()["status"] == "ok"
    assert open_server.process.poll() is None


@pytest.fixture(scope="module")
def batch_server(tiny_dir, tmp_path_factory):
    """A server decoding up to 8 requests as rows of one batch."""
    from conftest import ServerProcess

    server = ServerProcess(["--model", str(tiny_dir), "--served-model-name", SERVED_NAME,
                            "--budget", "6", "--max-batch", "8"], tmp_path_factory.mktemp("home"))
    yield server
    server.stop()


@pytest.mark.parametrize("which", ["open_server", "batch_server"])
def test_thirty_two_concurrent_streams_each_get_their_own_greedy_answer(which, request,
                                                                        reference):
    server = request.getfixturevalue(which)
    requests = [[{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} #{i}"}]
                for i in range(32)]
    expected = [reference(messages=m, max_tokens=24).text for m in requests]
    active = []

    async def one(client: openai.AsyncOpenAI, messages: list) -> str:
        stream = await client.chat.completions.create(
            model=SERVED_NAME, messages=messages, max_tokens=24, temperature=0, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def watch() -> None:
        while True:
            active.append(httpx.get(server.url + "/health").json()["active"])
            await asyncio.sleep(0.01)

    async def all_of_them() -> list[str]:
        watcher = asyncio.create_task(watch())
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x",
                                      max_retries=0, timeout=120) as client:
            answers = await asyncio.gather(*(one(client, m) for m in requests))
        watcher.cancel()
        return answers

    assert asyncio.run(all_of_them()) == expected
    assert max(active) == (8 if which == "batch_server" else 1)  # rows decoding at once


@pytest.mark.parametrize("which", ["open_server", "batch_server"])
def test_a_client_that_disconnects_mid_stream_frees_its_slot(which, request, reference):
    open_server = request.getfixturevalue(which)
    prompt = next(p for p in PROMPTS
                  if len(reference(prompt=p, max_tokens=400).token_ids) == 400)
    cancelled = open_server.metric('restdecode_requests_total{outcome="cancelled"}')
    generated = open_server.metric("restdecode_generated_tokens_total")
    body = {"model": SERVED_NAME, "prompt": prompt, "max_tokens": 400, "temperature": 0,
            "stream": True}
    with httpx.Client(base_url=open_server.url, timeout=30) as http:
        with http.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
            open_server.metric('restdecode_requests_total{outcome="cancelled"}') == cancelled):
        time.sleep(0.05)
    assert open_server.metric('restdecode_requests_total{outcome="cancelled"}') == cancelled + 1
    assert open_server.metric("restdecode_generated_tokens_total") == generated  # never finished
    assert open_server.health()["active"] == 0
    client = openai.OpenAI(base_url=open_server.url + "/v1", api_key="x")
    after = client.completions.create(model=SERVED_NAME, prompt="hi", max_tokens=5, temperature=0)
    assert after.usage.completion_tokens == len(reference(prompt="hi", max_tokens=5).token_ids)


def test_a_full_queue_answers_429_with_retry_after(start_server):
    server = start_server("--max-queue", "0")
    response = httpx.post(server.url + "/v1/completions",
                          json={"model": SERVED_NAME, "prompt": "hi", "max_tokens": 2})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"


def test_auth_on_refuses_missing_and_wrong_keys(start_server, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\nsk-alice alice\nsk-bob\n")
    server = start_server("--api-key", "sk-admin", "--api-keys-file", str(keys))
    body = {"model": SERVED_NAME, "prompt": "hi", "max_tokens": 2}
    url = server.url + "/v1/completions"
    missing = httpx.post(url, json=body)
    wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer sk-eve"})
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/v1/models").status_code == 401
    for key in ("sk-admin", "sk-alice", "sk-bob"):
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key)
        assert client.completions.create(**body).usage.completion_tokens >= 1
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="sk-eve",
                      max_retries=0).completions.create(**body)
    assert server.health()["status"] == "ok"  # /health needs no key
    assert "auth on (3 keys)" in server.stderr


def _readme_blocks(language: str) -> list[str]:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Serve", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def test_the_readme_serve_examples_run(open_server):
    bash_blocks, python_blocks = _readme_blocks("bash"), _readme_blocks("python")
    curl = next(block for block in bash_blocks if block.lstrip().startswith("curl"))
    assert "restdecode serve" in bash_blocks[0] and len(python_blocks) == 1
    port = open_server.url.rsplit(":", 1)[1]
    done = subprocess.run(["bash", "-c", curl.replace("127.0.0.1:8000", f"127.0.0.1:{port}")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["choices"][0]["message"]["role"] == "assistant"
    done = subprocess.run([sys.executable, "-c",
                           python_blocks[0].replace("127.0.0.1:8000", f"127.0.0.1:{port}")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("\n")


def test_a_sampled_answer_is_reproduced_by_its_seed(open_server):
    client = openai.OpenAI(base_url=open_server.url + "/v1", api_key="x")

    def sample(seed: int) -> list[int]:
        answer = client.completions.create(model=SERVED_NAME, prompt="hello", max_tokens=24,
                                           temperature=1.0, top_p=0.9, seed=seed)
        return answer.model_extra["restdecode"]["completion_token_ids"]

    assert sample(7) == sample(7)
    assert len({tuple(sample(seed)) for seed in range(4)}) > 1


@pytest.mark.assets
def test_the_default_gguf_model_is_served_on_llama_cpp():
    """Same answer as the engine in this process with the same drafter (a GGUF's batched
    numerics may differ from llama.cpp's one-token decoding at near-ties, not between runs)."""
    pytest.importorskip("llama_cpp")
    from conftest import ServerProcess

    from restdecode import Engine
    from restdecode.assets import restdecode_home
    from restdecode.engine import DEFAULT_MODEL, default_datastore

    args = ["--model", DEFAULT_MODEL, "--backend", "llamacpp", "--budget", "6"]
    messages = [{"role": "user", "content": "Name three colors."}]
    engine = Engine.load(DEFAULT_MODEL, backend="llamacpp", budget=6,
                         datastore=default_datastore(DEFAULT_MODEL), say=lambda message: None)
    expected = engine.generate(messages=messages, max_new_tokens=32)
    del engine
    server = ServerProcess(args, restdecode_home())
    try:
        assert f"model {DEFAULT_MODEL} on llamacpp" in server.stderr
        answer = openai.OpenAI(base_url=server.url + "/v1", api_key="x").chat.completions.create(
            model=DEFAULT_MODEL, messages=messages, max_tokens=32, temperature=0)
        assert answer.choices[0].message.content == expected.text
        assert answer.model_extra["restdecode"]["completion_token_ids"] == expected.token_ids
    finally:
        server.stop()


def test_a_draft_model_drafts_for_every_request(start_server, tiny_dir, reference):
    """--draft-model (here the served model itself: its drafts are accepted), batched rows each
    with a draft-model session of their own; greedy answers stay plain greedy's."""
    server = start_server("--draft-model", str(tiny_dir), "--draft-k", "3", "--max-batch", "2")
    assert f"draft model {tiny_dir}" in server.stderr
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    for prompt in PROMPTS[:2]:
        expected = reference(prompt=prompt, max_tokens=24)
        answer = client.completions.create(model=SERVED_NAME, prompt=prompt, max_tokens=24,
                                           temperature=0)
        extra = answer.model_extra["restdecode"]
        assert extra["completion_token_ids"] == expected.token_ids
        assert extra["steps"] < len(expected.token_ids) / 2
