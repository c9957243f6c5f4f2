import json

import pytest

from restdecode.errors import RestdecodeError
from restdecode.workloads import Prompt, load_workload


def test_user_prompts_accept_raw_and_chat_lines(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps({"prompt": "def add(a, b):"}) + "\n\n"
        + json.dumps({"id": "greet", "messages": [{"role": "user", "content": "hi"}]}) + "\n"
    )
    prompts = load_workload(f"prompts:{path}")
    assert [p.id for p in prompts] == ["mine/1", "greet"]
    assert prompts[0].text == "def add(a, b):" and prompts[0].messages is None
    assert prompts[1].messages == [{"role": "user", "content": "hi"}] and prompts[1].text is None


@pytest.mark.parametrize(
    "content, message",
    [("{not json\n", "not valid JSON"), ('{"text": "x"}\n', "expected"), ("\n", "no prompts")],
)
def test_user_prompts_bad_lines_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(RestdecodeError, match=message) as error:
        load_workload(f"prompts:{path}")
    assert str(path) in str(error.value)


def test_unknown_workload_and_bad_limit(tmp_path):
    with pytest.raises(RestdecodeError, match="unknown workload"):
        load_workload("gsm8k")
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    assert len(load_workload(f"prompts:{path}", limit=1)) == 1
    with pytest.raises(RestdecodeError, match="at least 1"):
        load_workload(f"prompts:{path}", limit=0)


def test_prompt_needs_exactly_one_input():
    with pytest.raises(ValueError):
        Prompt(id="x")
    with pytest.raises(ValueError):
        Prompt(id="x", text="a", messages=[{"role": "user", "content": "b"}])


@pytest.mark.assets
def test_real_mtbench_and_humaneval():
    mtbench = load_workload("mtbench")
    assert len(mtbench) == 80
    assert all(p.messages[0]["role"] == "user" and len(p.meta["turns"]) == 1 for p in mtbench)
    assert len(load_workload("mtbench", turns=2)[0].meta["turns"]) == 2
    humaneval = load_workload("humaneval")
    assert len(humaneval) == 164
    assert humaneval[0].id == "HumanEval/0" and "def " in humaneval[0].text
