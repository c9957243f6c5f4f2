"""The live server's learned memory: repeats accept more, tenants stay apart, kill -9 loses
only the torn record."""

from __future__ import annotations

import struct
import threading

import openai
from conftest import SERVED_NAME

QUESTION = [{"role": "user", "content": "explain speculative decoding"}]


def ask(server, key: str = "none", messages=QUESTION, max_tokens: int = 64):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    answer = client.chat.completions.create(model=SERVED_NAME, messages=messages,
                                            max_tokens=max_tokens, temperature=0)
    extension = answer.model_extra["restdecode"]
    return extension["completion_token_ids"], extension["steps"]


def test_a_repeated_request_drafts_from_the_memory(start_server, tmp_path, reference):
    server = start_server("--memory", str(tmp_path / "memory"))
    first, first_steps = ask(server)
    again, again_steps = ask(server)
    assert first == again == reference(messages=QUESTION, max_tokens=64).token_ids
    assert len(first) > 20 and again_steps < first_steps / 2
    assert server.health()["memory"]["records"] == 2


def test_one_tenant_never_drafts_from_another_tenants_requests(start_server, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-a alice\nsk-b bob\n")
    server = start_server("--api-keys-file", str(keys), "--memory", str(tmp_path / "memory"))
    assert "(per-key)" in server.stderr  # several keys: per-key memory by default
    alice, alice_steps = ask(server, "sk-a")
    _, alice_again_steps = ask(server, "sk-a")
    bob, bob_steps = ask(server, "sk-b")
    assert alice_again_steps < alice_steps / 2
    assert bob == alice and bob_steps == alice_steps  # drafted exactly as alice's first time
    assert server.health()["memory"]["tenants"] == 2


def test_kill_9_then_restart_keeps_every_answered_request(start_server, tmp_path):
    directory, home = tmp_path / "memory", tmp_path / "home"
    server = start_server("--memory", str(directory), home=home)
    answered, stop = [], threading.Event()

    def keep_asking() -> None:
        for index in range(1000):
            if stop.is_set():
                return
            try:
                ask(server, messages=[{"role": "user", "content": f"request {index}"}],
                    max_tokens=8)
            except openai.APIConnectionError:
                return
            answered.append(index)

    worker = threading.Thread(target=keep_asking)
    worker.start()
    while len(answered) < 5:
        worker.join(0.05)
    server.kill()  # SIGKILL while requests (and their appends) are in flight
    stop.set()
    worker.join()
    with open(directory / "memory.log", "ab") as log:  # a record torn mid-write
        log.write(struct.pack("<III", 400, 0, 0)[:10])

    restarted = start_server("--memory", str(directory), home=home)
    records = restarted.health()["memory"]["records"]
    assert len(answered) <= records <= len(answered) + 1  # + one recorded, never answered
    assert "torn" in restarted.stderr.lower()
    ask(restarted, max_tokens=4)
    assert restarted.health()["memory"]["records"] == records + 1
