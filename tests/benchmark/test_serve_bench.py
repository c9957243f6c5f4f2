"""bench/serve_bench.py end to end on the tiny model: live servers, the openai client, every
configuration; greedy answers must be token-identical across all of them (losslessness)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.tiny import SENTENCES, make_model_dir

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "serve_bench.py"
PROMPTS = [
    {"id": "raw", "prompt": SENTENCES[0]},  # /v1/completions
    {"id": "chat-1", "messages": [{"role": "user", "content": SENTENCES[3]}]},
    {"id": "chat-2", "messages": [{"role": "user", "content": SENTENCES[4]}]},
]
CONFIGURATIONS = ["speculation on", "speculation off", "memory off", "memory on"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[dict, Path]:
    """One run of the script: (results.json, its --out directory)."""
    root = tmp_path_factory.mktemp("serve_bench")
    model = make_model_dir(root / "model")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(line) + "\n" for line in PROMPTS), encoding="utf-8")
    out = root / "out"
    env = os.environ | {"RESTDECODE_HOME": str(root / "home"), "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", str(model), "--backend", "transformers",
         "--prompts", f"prompts:{prompts}", "--limit", "3", "--max-tokens", "8",
         "--concurrency", "1,2", "--extra-serve-args", "--budget 4", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "## Learned memory" in finished.stdout  # the tables are printed
    return json.loads((out / "results.json").read_text(encoding="utf-8")), out


def test_every_configuration_ran_and_was_summarised(results):
    document, out = results
    assert {"command", "machine", "servers", "prompts", "lossless", "runs"} <= document.keys()
    assert document["machine"]["cpu_count"] >= 1
    assert document["machine"]["backend"] == "transformers"
    assert [server["name"] for server in document["servers"]] == CONFIGURATIONS
    plan = [(run["configuration"], run["concurrency"], run["pass"]) for run in document["runs"]]
    assert plan == [("speculation on", 1, None), ("speculation on", 2, None),
                    ("speculation off", 1, None), ("speculation off", 2, None),
                    ("memory off", 1, 1), ("memory off", 1, 2),
                    ("memory on", 1, 1), ("memory on", 1, 2)]
    for run in document["runs"]:
        summary = run["summary"]
        assert summary["requests"] == 3 and summary["failed"] == 0
        assert summary["output_tokens_per_s"] > 0 and summary["requests_per_s"] > 0
        assert summary["ttft"]["p50_ms"] > 0 and summary["tpot"]["p99_ms"] is not None
        assert [request["prompt_id"] for request in run["requests"]] == ["raw", "chat-1", "chat-2"]
        for request in run["requests"]:
            assert request["completion_tokens"] == len(request["token_ids"]) == 8
            assert request["finish_reason"] == "length" and request["text"]
            assert len(request["itl_s"]) == request["chunks"] - 1
    for name in ("report.md", "serve.png"):
        assert (out / name).stat().st_size > 0


def test_greedy_answers_are_identical_in_every_configuration(results):
    document, _ = results
    assert document["lossless"] == {"prompts": 3, "identical": True, "mismatches": []}
    for prompt_id in ("raw", "chat-1", "chat-2"):
        answers = {(run["label"], request["text"], tuple(request["token_ids"]))
                   for run in document["runs"] for request in run["requests"]
                   if request["prompt_id"] == prompt_id}
        assert len(answers) == 8
        assert len({(text, ids) for _, text, ids in answers}) == 1, answers


def test_the_memory_drafts_the_second_pass(results):
    document, _ = results
    tokens_per_step = {(run["configuration"], run["pass"]): run["summary"]["tokens_per_step"]
                       for run in document["runs"]}
    assert tokens_per_step[("speculation off", None)] == 1.0
    assert tokens_per_step[("memory on", 2)] > tokens_per_step[("memory off", 2)]
    assert tokens_per_step[("memory on", 2)] > tokens_per_step[("memory on", 1)]
