"""Run an untrusted Python program (a HumanEval check program) in a throwaway Linux sandbox.

Each run is a fresh ``python -I`` (isolated mode, clean environment) started through util-linux's
``unshare`` in new mount, network and pid namespaces, in its own session. What it stops:

* **writes outside its scratch space**: every mount is made read-only and nosuid (one recursive
  ``mount_setattr``, Linux >= 5.12); ``/tmp`` is a fresh size-limited tmpfs, its working directory
  and the only writable place, gone when the run ends; ``/run``, ``/var/tmp`` and ``/dev/shm`` are
  masked by empty read-only tmpfs (no system sockets, no shared scratch).
* **undoing that**: as root the program runs as ``nobody`` with every capability dropped but
  ``CAP_DAC_READ_SEARCH`` (so it can still read an interpreter under ``/root``) and
  ``no_new_privs`` (setuid binaries gain nothing); when not root, it runs in one more user
  namespace, which has no power over the mounts.
* **network**: a new network namespace with only a down loopback: nothing can be reached.
* **runaway processes**: its own pid namespace whose init (``_sandbox_init.py``) ends with the
  program, which kills everything left inside; on timeout the whole process group is SIGKILLed,
  which kills that init too. RLIMIT_NPROC (as ``nobody``, where it is enforced) bounds fork bombs.
* **resources**: RLIMIT_AS (memory per process), RLIMIT_FSIZE, RLIMIT_CPU, no core files; output
  goes to unlinked temporary files, of which only the tail is kept.

What it does not stop: reading any file (the program could read what root can read, though it
cannot send it anywhere but its own stdout); memory is limited per process, not in total (at
most ``processes`` x ``memory_bytes``), and there is no cgroup. Without root the process-count
limit is not applied (RLIMIT_NPROC would count all of the caller's processes); the pid namespace
and the timeout still bound them.

When the sandbox cannot be built, :func:`require_isolation` raises :class:`RestdecodeError`
saying why; ``isolate=False`` opts out explicitly (temporary directory, rlimits and process-group
kill only: the program can write wherever the caller can).
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from restdecode.errors import RestdecodeError

INIT = Path(__file__).with_name("_sandbox_init.py")
SETUP_FAILED = 125  # _sandbox_init's exit status when it could not build the sandbox
OUTPUT_TAIL = 64 << 10
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class Limits:
    """What one run may use. ``timeout_s`` is wall time, sandbox setup included."""

    timeout_s: float = 3.0
    memory_bytes: int = 1 << 30  # RLIMIT_AS, per process
    processes: int = 16  # RLIMIT_NPROC of the sandbox's user
    file_bytes: int = 16 << 20  # RLIMIT_FSIZE
    tmpfs_bytes: int = 32 << 20  # size of the scratch /tmp


@dataclass(frozen=True)
class RunResult:
    """How a run ended. ``returncode`` is None when it was killed at the timeout."""

    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str
    wall_s: float

    @property
    def ok(self) -> bool:
        """Exited with status 0 within the time limit."""
        return self.returncode == 0 and not self.timed_out


def run_python(program: str, limits: Limits = Limits(), *, isolate: bool = True) -> RunResult:
    """Run ``program`` (Python source) in a fresh sandboxed interpreter; how it ended.

    Raises :class:`RestdecodeError` when ``isolate`` and the sandbox is unavailable or broke.
    """
    if not isolate:
        return _run_unisolated(program, limits)
    require_isolation()
    result = _run(_isolated_argv(limits), program.encode(), limits)
    if result.returncode == SETUP_FAILED and "restdecode-sandbox:" in result.stderr:
        raise RestdecodeError(f"the sandbox could not be set up: {result.stderr.strip()}")
    return result


@lru_cache(maxsize=1)
def isolation_problem() -> str | None:
    """Why the sandbox cannot run here (None when it can), from a trial run of a tiny program."""
    if sys.platform != "linux":
        return "it needs Linux namespaces"
    for tool in ("unshare", "setpriv") if os.geteuid() == 0 else ("unshare",):
        if shutil.which(tool) is None:
            return f"util-linux's `{tool}` is not installed"
    trial = _run(_isolated_argv(Limits(timeout_s=30.0)), b"print('sandbox ok')", Limits(30.0))
    if trial.stdout.strip() != "sandbox ok":
        return (f"a trial run failed (exit status {trial.returncode}): "
                f"{trial.stderr.strip()[-500:] or 'no message'}")
    return None


def require_isolation() -> None:
    """Raise :class:`RestdecodeError` saying what is missing when the sandbox cannot run here."""
    problem = isolation_problem()
    if problem is not None:
        raise RestdecodeError(
            f"cannot sandbox untrusted check programs: {problem}. The sandbox needs Linux >= 5.12 "
            "and util-linux's unshare (and setpriv as root) with namespaces allowed (a container "
            "may need --privileged or CAP_SYS_ADMIN); pass isolate=False to run them without it, "
            "which lets them write wherever this process can")


def _isolated_argv(limits: Limits) -> list[str]:
    root = os.geteuid() == 0
    namespaces = ["--mount", "--net", "--pid", "--fork", "--kill-child", "--propagation", "private"]
    numbers = [limits.memory_bytes, limits.processes if root else -1, limits.file_bytes,
               _cpu_seconds(limits), limits.tmpfs_bytes]
    return (["unshare", *namespaces, *([] if root else ["--map-root-user"]),
             sys.executable, "-I", "-S", str(INIT), "root" if root else "user", _interpreter(),
             *map(str, numbers)])


def _interpreter() -> str:
    """The real interpreter behind ``sys.executable``: a venv's link may live under /tmp (a fresh
    clone there, say), which the sandbox replaces by an empty tmpfs; check programs need only the
    standard library, which ``-I`` gives them from the base installation."""
    return os.path.realpath(sys.executable)


def _cpu_seconds(limits: Limits) -> int:
    return math.ceil(limits.timeout_s) + 1


def _run_unisolated(program: str, limits: Limits) -> RunResult:
    """The opt-out: a temporary directory, rlimits and a process-group kill, nothing more."""
    def set_limits() -> None:
        for limit, value in ((resource.RLIMIT_AS, limits.memory_bytes),
                             (resource.RLIMIT_FSIZE, limits.file_bytes), (resource.RLIMIT_CORE, 0),
                             (resource.RLIMIT_CPU, _cpu_seconds(limits))):
            resource.setrlimit(limit, (value, value))

    with tempfile.TemporaryDirectory() as workdir:
        Path(workdir, "check.py").write_text(program, encoding="utf-8")
        return _run([sys.executable, "-I", "check.py"], b"", limits, cwd=workdir,
                    preexec_fn=set_limits)


def _run(argv: list[str], stdin: bytes, limits: Limits, **popen) -> RunResult:
    """Run ``argv`` in a new session; SIGKILL its whole process group at the timeout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err, env=ENV,
                                   start_new_session=True, **popen)
        timed_out = False
        try:
            process.communicate(stdin, timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(process.pid)  # also whatever an unisolated program left running
            process.wait()
        wall = time.monotonic() - start
        return RunResult(None if timed_out else process.returncode, timed_out, _tail(out),
                         _tail(err), wall)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(file) -> str:
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - OUTPUT_TAIL))
    return file.read().decode("utf-8", errors="replace")
