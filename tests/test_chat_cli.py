"""`restdecode chat`: driven through a pipe (no TTY), and the session's history and Ctrl-C."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.tiny import make_model_dir

STATS_LINE = re.compile(
    r"^\[(\d+) tokens, [\d.]+ tok/s, ([\d.]+) accepted/step, "
    r"(~[\d.]+x vs plain decoding \(measured plain step \d+ ms\)|speedup n/a)\]$", re.MULTILINE)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny") / "model")


def chat(tiny_dir: Path, stdin: str, *extra: str) -> subprocess.CompletedProcess:
    # Its own home: the tiny model's latency profile must not land in the user's cache.
    env = os.environ | {"RESTDECODE_HOME": str(tiny_dir.parent / "home")}
    return subprocess.run(
        [sys.executable, "-m", "restdecode", "chat", "--model", str(tiny_dir),
         "--max-new-tokens", "12", *extra],
        input=stdin, capture_output=True, text=True, timeout=120, env=env)


def test_chat_through_a_pipe_replies_to_each_line_until_exit(tiny_dir):
    done = chat(tiny_dir, "hello there\n\nhow are you?\n/exit\nnever read\n")
    assert done.returncode == 0, done.stderr
    stats = STATS_LINE.findall(done.stdout)
    assert len(stats) == 2  # the blank line is skipped, nothing after /exit is read
    for tokens, accepted, _ in stats:
        assert 1 <= int(tokens) <= 12
        assert float(accepted) >= 1.0
    assert "drafter: MemoryDrafter" in done.stderr  # no datastore: context (+ memory) only


def test_chat_ends_at_end_of_input(tiny_dir):
    done = chat(tiny_dir, "one message, no exit command")
    assert done.returncode == 0, done.stderr
    assert len(STATS_LINE.findall(done.stdout)) == 1


def test_chat_rejects_a_missing_datastore(tiny_dir, tmp_path):
    done = chat(tiny_dir, "hi\n", "--datastore", str(tmp_path / "missing.rds"))
    assert done.returncode == 1
    assert "missing.rds" in done.stderr


def test_replies_are_remembered_across_sessions_unless_asked_not_to(tiny_dir, tmp_path):
    memory_file = tmp_path / "chat-memory.npz"
    first = chat(tiny_dir, "hello there\nagain\n", "--memory-file", str(memory_file))
    assert first.returncode == 0, first.stderr
    assert "memory: 0 earlier replies" in first.stderr and memory_file.is_file()
    second = chat(tiny_dir, "hi\n", "--memory-file", str(memory_file))
    assert "memory: 2 earlier replies" in second.stderr, second.stderr
    saved = memory_file.read_bytes()
    session = chat(tiny_dir, "hi\n", "--memory-file", str(memory_file), "--memory", "session")
    assert "memory: session" in session.stderr and memory_file.read_bytes() == saved


def test_a_damaged_memory_file_is_moved_aside(tiny_dir, tmp_path):
    memory_file = tmp_path / "chat-memory.npz"
    memory_file.write_bytes(b"not a memory")
    done = chat(tiny_dir, "hi\n", "--memory-file", str(memory_file))
    assert done.returncode == 0, done.stderr
    assert "moved it to" in done.stderr and "memory: 0 earlier replies" in done.stderr
    assert (tmp_path / "chat-memory.npz.damaged").read_bytes() == b"not a memory"


class InterruptAfter(io.StringIO):
    """An output stream that raises KeyboardInterrupt (as Ctrl-C would) at its n-th write."""

    def __init__(self, writes: int) -> None:
        super().__init__()
        self.writes_left = writes

    def write(self, text: str) -> int:
        self.writes_left -= 1
        if self.writes_left == 0:
            raise KeyboardInterrupt
        return super().write(text)


def test_session_keeps_history_and_survives_ctrl_c(tiny_dir):
    from restdecode.cli.chat import ChatSession
    from restdecode.drafting import DEFAULT_BUDGET
    from restdecode.engine import Engine
    from restdecode.models import load
    from restdecode.options import GenerationOptions

    engine = Engine(*load(tiny_dir), budget=DEFAULT_BUDGET, memory=True)
    session = ChatSession(engine, GenerationOptions(max_new_tokens=10), plain_step_s=0.01)
    out = io.StringIO()
    stats = session.reply("hello", out)
    assert stats is not None and 1 <= stats.new_tokens <= 10
    reply = session.history[-1]["content"]
    assert session.history[-2] == {"role": "user", "content": "hello"}
    assert out.getvalue().startswith(reply) and STATS_LINE.search(out.getvalue())

    interrupted = InterruptAfter(writes=3)  # prefix, first piece, then Ctrl-C
    assert session.reply("go on", interrupted) is None
    partial = interrupted.getvalue()
    assert partial.endswith(" [stopped]\n")
    assert session.history[-1] == {"role": "assistant", "content": partial.removesuffix(" [stopped]\n")}
    assert len(session.history) == 4

    after = io.StringIO()
    assert session.reply("and then?", after) is not None  # the session goes on
    assert len(session.history) == 6
