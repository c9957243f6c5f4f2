"""Prompt sets to decode: MT-Bench (chat), HumanEval (code completion), or the user's own JSONL."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

from restdecode.errors import OptionsError, RestdecodeError
from restdecode.options import check_messages


@dataclass(frozen=True)
class Prompt:
    """One unit of work: raw completion ``text`` or chat ``messages`` (exactly one is set).

    ``meta`` keeps what the workload knows besides the input: MT-Bench's category and all turns,
    HumanEval's test code and entry point.
    """

    id: str
    text: str | None = None
    messages: list[dict] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.text is None) == (self.messages is None):
            raise ValueError(f"prompt {self.id}: exactly one of text and messages must be set")


WORKLOADS = ("mtbench", "humaneval", "prompts:PATH")


def load_workload(spec: str, *, limit: int | None = None, turns: int = 1) -> list[Prompt]:
    """Prompts of ``spec`` (``mtbench``, ``humaneval`` or ``prompts:PATH``), the first ``limit``.

    ``turns`` only matters for MT-Bench: 1 gives the first turns; 2 gives first turns too, with
    the second turn in ``meta["turns"]`` for the caller to play after generating the first answer.
    """
    if spec == "mtbench":
        prompts = _mtbench(turns)
    elif spec == "humaneval":
        prompts = _humaneval()
    elif spec.startswith("prompts:"):
        prompts = _user_prompts(Path(spec.removeprefix("prompts:")))
    else:
        raise RestdecodeError(f"unknown workload {spec!r}; expected one of {', '.join(WORKLOADS)}")
    if limit is not None:
        if limit < 1:
            raise RestdecodeError(f"--limit must be at least 1, got {limit}")
        prompts = prompts[:limit]
    return prompts


def _mtbench(turns: int) -> list[Prompt]:
    from restdecode.assets import fetch

    if turns not in (1, 2):
        raise RestdecodeError(f"MT-Bench has 1 or 2 turns, got {turns}")
    prompts = []
    for line in fetch("mtbench", quiet=True).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        prompts.append(
            Prompt(
                id=f"mtbench/{record['question_id']}",
                messages=[{"role": "user", "content": record["turns"][0]}],
                meta={"category": record.get("category"), "turns": record["turns"][:turns]},
            )
        )
    return prompts


def _humaneval() -> list[Prompt]:
    from restdecode.assets import fetch

    with gzip.open(fetch("humaneval", quiet=True), "rt", encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines if line.strip()]
    return [
        Prompt(
            id=record["task_id"],
            text=record["prompt"],
            meta={"test": record["test"], "entry_point": record["entry_point"]},
        )
        for record in records
    ]


def _user_prompts(path: Path) -> list[Prompt]:
    if not path.is_file():
        raise RestdecodeError(f"prompts file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RestdecodeError(f"prompts file {path} cannot be read as UTF-8 text ({error})") from None
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            prompts.append(_user_prompt(json_record(line, f"{path}:{number}"), path, number))
    if not prompts:
        raise RestdecodeError(f"prompts file {path} holds no prompts")
    return prompts


def json_record(line: str, where: str) -> object:
    """One JSON value, or a one-line error naming ``where``."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise RestdecodeError(f"{where}: not valid JSON ({error.msg})") from None
    except RecursionError:
        raise RestdecodeError(f"{where}: JSON nested too deeply") from None


def _user_prompt(record: object, path: Path, number: int) -> Prompt:
    expected = (f'{path}:{number}: expected {{"prompt": "..."}} or '
                f'{{"messages": [{{"role": ..., "content": "..."}}, ...]}}')
    if not isinstance(record, dict):
        raise RestdecodeError(f"{expected}, got a JSON {type(record).__name__}")
    prompt_id = str(record.get("id", f"{path.stem}/{number}"))
    if isinstance(record.get("prompt"), str):
        return Prompt(id=prompt_id, text=record["prompt"])
    if "messages" in record:
        try:
            return Prompt(id=prompt_id, messages=check_messages(record["messages"]))
        except OptionsError as error:
            raise RestdecodeError(f"{path}:{number}: {error}") from None
    raise RestdecodeError(expected)
