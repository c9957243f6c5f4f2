"""Inside the sandbox's namespaces, as their pid 1: lock the filesystem, then run the program.

Started by :mod:`restdecode.benchmark.sandbox` as
``unshare --mount --net --pid --fork --kill-child python -I -S _sandbox_init.py ARGS`` with the
program on stdin. Standard library only (it runs with ``-S``, before anything is importable).

Arguments: ``MODE PYTHON MEMORY_BYTES PROCESSES FILE_BYTES CPU_S TMPFS_BYTES``. ``MODE`` is
``root`` (we are real root: drop to ``nobody`` with setpriv) or ``user`` (we are root of a user
namespace mapped to the caller: enter one more user namespace that holds no power over the mounts).
Exit status: the program's (128 + N when killed by signal N), or :data:`SETUP_FAILED` with a
``restdecode-sandbox:`` line on stderr when the sandbox could not be built.
"""

import ctypes
import os
import resource
import sys

SETUP_FAILED = 125
NOBODY = 65534
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (new syscalls are unified)
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 0x1, 0x2
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MASKED = ("/run", "/var/tmp", "/dev/shm")  # empty and read-only inside: no sockets, no scratch
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp", "TMPDIR": "/tmp",
       "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

_libc = ctypes.CDLL(None, use_errno=True)


def fail(message: str) -> None:
    sys.stderr.write(f"restdecode-sandbox: {message}\n")
    sys.stderr.flush()
    os._exit(SETUP_FAILED)


def check(result: int, what: str) -> None:
    if result != 0:
        fail(f"{what}: {os.strerror(ctypes.get_errno())}")


def mount(source: str, target: str, fstype: str, flags: int, data: str | None = None) -> None:
    check(_libc.mount(source.encode(), target.encode(), fstype.encode(), flags,
                      data.encode() if data else None), f"mount {fstype} on {target}")


def lock_filesystem(tmpfs_bytes: int) -> None:
    """Every existing mount read-only and nosuid; a fresh small tmpfs as ``/tmp``; fresh /proc."""
    attr = ctypes.create_string_buffer(  # struct mount_attr {attr_set, attr_clr, propagation, userns_fd}
        (MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID).to_bytes(8, "little") + bytes(24))
    check(_libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, attr, 32),
          "mount_setattr(/, read-only, recursive) (needs Linux >= 5.12)")
    for path in MASKED:
        if os.path.isdir(path) and not os.path.islink(path):
            mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k")
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmpfs_bytes},mode=1777")
    # Our pid namespace's own /proc; where that is refused the old one stays (read-only).
    _libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)


def set_limits(memory: int, processes: int, file_bytes: int, cpu_s: int) -> None:
    for limit, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_NPROC, processes),
                         (resource.RLIMIT_FSIZE, file_bytes), (resource.RLIMIT_CORE, 0)):
        if value >= 0:  # -1: leave as is
            resource.setrlimit(limit, (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))


def drop_privileges(mode: str) -> list[str]:
    """The command prefix that runs what follows without the power to undo the sandbox."""
    if mode == "root":  # CAP_DAC_READ_SEARCH alone: nobody may still read the interpreter
        return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                "--inh-caps=-all,+dac_read_search", "--ambient-caps=+dac_read_search",
                "--bounding-set=-all,+dac_read_search", "--no-new-privs", "--"]
    return ["unshare", "--user", "--"]


def run_child(mode: str, python: str, limits: list[int]) -> None:
    """In the forked child: limits, stdin from /dev/null, then exec the program."""
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        set_limits(*limits)
        argv = drop_privileges(mode) + [python, "-I", "/tmp/check.py"]
        os.execvpe(argv[0], argv, ENV)
    except OSError as error:
        fail(f"cannot start the program: {error}")


def wait_for(child: int) -> int:
    """Reap everything (orphans are re-parented to us) until ``child`` ends; its exit status."""
    while True:
        pid, status = os.wait()
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code


def main(argv: list[str]) -> None:
    mode, python, *numbers = argv
    memory, processes, file_bytes, cpu_s, tmpfs_bytes = map(int, numbers)
    program = sys.stdin.buffer.read()
    lock_filesystem(tmpfs_bytes)
    with open("/tmp/check.py", "wb") as file:
        file.write(program)
    os.chdir("/tmp")
    child = os.fork()
    if child == 0:
        run_child(mode, python, [memory, processes, file_bytes, cpu_s])
    sys.stdout.flush()
    os._exit(wait_for(child))  # leaving pid 1 kills whatever the program left running


if __name__ == "__main__":
    main(sys.argv[1:])
