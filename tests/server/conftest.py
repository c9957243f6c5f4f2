"""Live `restdecode serve` subprocesses on 127.0.0.1 over the tiny test model."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: benchmark.tiny

from benchmark.tiny import make_model_dir  # noqa: E402

SERVED_NAME = "smollm2-135m-instruct"  # the README's examples run unchanged against the tiny model
STARTUP_S = 180


class ServerProcess:
    """A running server: ``url`` (http://127.0.0.1:PORT), its stderr lines, stop/kill."""

    def __init__(self, args: list[str], home: Path) -> None:
        env = os.environ | {"RESTDECODE_HOME": str(home), "OMP_NUM_THREADS": "1",
                            "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "restdecode", "serve", "--port",
                                         "0", *args], stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self._banner = threading.Event()
        self.url = ""
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._banner.wait(STARTUP_S) or not self.url:
            self.kill()
            raise RuntimeError("server did not start:\n" + self.stderr)
        self._wait_healthy()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def _drain(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)
            if line.startswith("restdecode serve: http://"):
                self.url = line.split()[2].removesuffix("/v1")
                self._banner.set()
        self._banner.set()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("server never became healthy:\n" + self.stderr)

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=5).json()

    def metric(self, name: str) -> float:
        """The value of one Prometheus sample line (0 when absent)."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(20)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="session")
def reference(tiny_dir):
    """Greedy ``restdecode.generate`` on the tiny model, in this process (no drafter)."""
    from restdecode import Engine

    engine = Engine.load(str(tiny_dir), draft=False, progress=False, say=lambda message: None)

    def answer(*, max_tokens: int, prompt: str | None = None, messages: list | None = None):
        return engine.generate(prompt=prompt, messages=messages, max_new_tokens=max_tokens)

    return answer


@pytest.fixture
def start_server(tiny_dir, tmp_path_factory):
    """Start servers over the tiny model (each stopped at the test's end)."""
    started: list[ServerProcess] = []

    def start(*args: str, home: Path | None = None) -> ServerProcess:
        home = home or tmp_path_factory.mktemp("home")
        server = ServerProcess(["--model", str(tiny_dir), "--served-model-name", SERVED_NAME,
                                "--budget", "6", *args], home)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def open_server(tiny_dir, tmp_path_factory):
    """A server without auth or memory, shared by a test module."""
    server = ServerProcess(["--model", str(tiny_dir), "--served-model-name", SERVED_NAME,
                            "--budget", "6"], tmp_path_factory.mktemp("home"))
    yield server
    server.stop()
