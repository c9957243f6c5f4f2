"""Loading causal LMs and their tokenizers: asset names, GGUF files, or Hugging Face directories.

A GGUF file is de-quantized once (transformers' GGUF loader, ~20 s for SmolLM2-135M on 2 cores)
and cached as a plain Hugging Face directory under
``restdecode_home() / "models" / "<gguf stem>-<sha256[:12]>"``: ``model.safetensors`` (float32,
tied tensors stored once), ``config.json``, ``generation_config.json``, the tokenizer files
(with the chat template) and ``restdecode-source.json`` (where it came from). Later loads read
that directory in a second or two. The directory is written under a temporary name and renamed
into place when complete, so a crash never leaves a half-written cache behind.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from restdecode import assets
from restdecode.errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Asset names that are models (the others in restdecode.assets are data sets).
MODEL_ASSETS: tuple[str, ...] = ("smollm2-135m-instruct", "gemma3-270m",
                                 "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct")

# The dtype a model asset runs in on the transformers backend, where fp32 is not the faster one
# on this project's CPU. Qwen2.5-Coder-1.5B-Instruct, plain greedy on 2 cores (AMD EPYC, torch
# 2.13), 32 tokens, two rounds interleaved: fp32 2.57 / 2.63 tok/s, bf16 5.60 / 4.69 tok/s, the
# same tokens (bench/RESULTS.md, issue 16). Lossless decoding is then lossless with respect to
# that dtype. Anything else loads in fp32.
ASSET_DTYPES: dict[str, torch.dtype] = {"qwen2.5-coder-1.5b-instruct": torch.bfloat16}

WEIGHTS_FILE = "model.safetensors"
SOURCE_FILE = "restdecode-source.json"  # written last: its presence marks a complete cache


def load(
    name_or_path: str | os.PathLike, *, dtype: torch.dtype | None = None, quiet: bool = False
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Load a causal LM and its tokenizer, the model in eval mode, in ``dtype`` (default: the
    asset's entry in ``ASSET_DTYPES``, else float32).

    ``name_or_path`` is a model asset name (``MODEL_ASSETS``: ``smollm2-135m-instruct``,
    ``gemma3-270m``, the Qwen2.5-Coder pair; fetched on first use), a path to a ``.gguf`` file (de-quantized once into the cache), or a local
    Hugging Face model directory. Raises ModelError for an unknown name or a missing path.
    """
    from transformers import AutoModelForCausalLM

    if dtype is None:
        dtype = ASSET_DTYPES.get(os.fspath(name_or_path), torch.float32)
    directory = resolve_model_dir(name_or_path, quiet=quiet)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
    model.eval()
    return model, load_tokenizer(directory)


def load_llamacpp(name_or_path: str | os.PathLike, *, quiet: bool = False, **backend_options):
    """A GGUF model on the llama.cpp backend and its tokenizer.

    ``name_or_path`` is a model asset name or a ``.gguf`` file (a Hugging Face directory has no
    GGUF to run); ``backend_options`` go to :class:`~restdecode.backends.llamacpp.LlamaCppBackend`.
    The tokenizer comes from the same cache as :func:`load_tokenizer` (the chat template and the
    token ids are the GGUF's own).
    """
    from restdecode.backends.llamacpp import LlamaCppBackend

    gguf = gguf_path(name_or_path, quiet=quiet)
    return LlamaCppBackend(gguf, **backend_options), load_tokenizer(name_or_path, quiet=quiet)


def is_gguf_model(name_or_path: str | os.PathLike) -> bool:
    """Whether ``name_or_path`` names a GGUF model (an asset, ``ASSET:TYPE`` or a .gguf file)."""
    text = os.fspath(name_or_path)
    if text.partition(":")[0] in MODEL_ASSETS:
        return True
    return Path(text).expanduser().suffix.lower() == ".gguf"


def gguf_path(name_or_path: str | os.PathLike, *, quiet: bool = False) -> Path:
    """The GGUF file of a model asset (fetched on first use), of ``ASSET:TYPE`` (the asset's
    weights re-quantized to TYPE, e.g. ``smollm2-135m-instruct:f32``: written once into the
    cache), or a ``.gguf`` path."""
    text = os.fspath(name_or_path)
    if text in MODEL_ASSETS:
        return assets.fetch(text, quiet=quiet)
    asset, _, ftype = text.partition(":")
    if asset in MODEL_ASSETS and ftype:
        return _requantized(asset, ftype, quiet=quiet)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    raise ModelError(f"the llama.cpp backend runs GGUF files: {text!r} is neither a .gguf file "
                     f"nor a model asset ({', '.join(MODEL_ASSETS)})")


def load_tokenizer(name_or_path: str | os.PathLike, *, quiet: bool = False) -> "PreTrainedTokenizerBase":
    """Load the tokenizer of a model (same ``name_or_path`` forms as :func:`load`).

    Fast once a GGUF has been converted; the first call on a GGUF converts the whole model so
    that the tokenizer always comes from the same cached files as the model.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_dir(name_or_path, quiet=quiet))


def _requantized(asset: str, ftype: str, *, quiet: bool) -> Path:
    """The model asset's GGUF re-quantized to ``ftype`` (llama.cpp's quantizer), cached."""
    from restdecode.backends.llamacpp import requantize

    source = assets.fetch(asset, quiet=quiet)
    target = assets.restdecode_home() / "models" / f"{source.stem}-{ftype.lower()}.gguf"
    if not target.is_file():
        if not quiet:
            print(f"writing {asset} as {ftype} into {target} (once)", file=sys.stderr)
        requantize(source, target, ftype)
    return target


def resolve_model_dir(name_or_path: str | os.PathLike, *, quiet: bool = False) -> Path:
    """The Hugging Face directory to load ``name_or_path`` from, converting a GGUF if needed.

    ``ASSET:TYPE`` (a re-quantized asset, see :func:`gguf_path`) resolves to the asset's own
    de-quantized directory: the transformers backend always runs the asset's weights in float32.
    """
    text = os.fspath(name_or_path)
    if ":" in text and text.partition(":")[0] in MODEL_ASSETS:
        text = text.partition(":")[0]
    if text in MODEL_ASSETS:
        asset = assets.get_asset(text)
        gguf = assets.fetch(text, quiet=quiet)
        return converted_gguf_dir(gguf, sha256=asset.sha256, quiet=quiet)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelError(f"{path} is a file but not a .gguf model; expected a GGUF file, "
                             f"a Hugging Face model directory, or one of: {', '.join(MODEL_ASSETS)}")
        return converted_gguf_dir(path, quiet=quiet)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is a directory without config.json, so not a Hugging Face "
                             f"model directory")
        return path
    raise ModelError(f"no model named {text!r}: not a model asset ({', '.join(MODEL_ASSETS)}), "
                     f"and no such file or directory")


def converted_gguf_dir(gguf: Path, *, sha256: str | None = None, quiet: bool = False) -> Path:
    """The cached Hugging Face directory for ``gguf``, de-quantizing it first if not cached.

    ``sha256`` (of the GGUF) names the cache entry; computed from the file when not given.
    """
    sha256 = sha256 or _gguf_sha256(gguf)
    target = assets.restdecode_home() / "models" / f"{gguf.stem}-{sha256[:12]}"
    if (target / SOURCE_FILE).is_file():
        return target
    _convert_gguf(gguf, sha256, target, quiet=quiet)
    return target


def _gguf_sha256(gguf: Path) -> str:
    """sha256 of a GGUF, taken from a fresh restdecode verified-marker when there is one."""
    marker = gguf.with_name(gguf.name + ".sha256")
    try:
        recorded_hash, recorded_size = marker.read_text().split()
        if int(recorded_size) == gguf.stat().st_size:
            return recorded_hash
    except (OSError, ValueError):
        pass
    return assets.sha256_of_file(gguf)


def _convert_gguf(gguf: Path, sha256: str, target: Path, *, quiet: bool) -> None:
    """De-quantize ``gguf`` and write it as a Hugging Face directory at ``target``, atomically."""
    if not quiet:
        print(f"de-quantizing {gguf} once into {target} (later loads use that cache)",
              file=sys.stderr)
    started = time.perf_counter()
    model, tokenizer = _dequantize(gguf)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        _save_hf_dir(model, tokenizer, temp)
        _write_source(temp, gguf, sha256, seconds=time.perf_counter() - started)
        _move_into_place(temp, target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _dequantize(gguf: Path) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Model (float32) and tokenizer read from a GGUF by transformers' GGUF loader."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
    except Exception as error:  # transformers raises many types for unsupported GGUFs
        raise ModelError(f"transformers could not load the GGUF {gguf}: "
                         f"{type(error).__name__}: {error}") from error
    return model, tokenizer


def _save_hf_dir(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase", out: Path) -> None:
    """Write weights, config, generation config and tokenizer as a loadable HF directory.

    ``save_pretrained`` refuses GGUF-loaded models, so the weights go through safetensors
    directly; ``save_model`` stores tied tensors (embeddings / lm_head) once.
    """
    from safetensors.torch import save_model

    out.mkdir(parents=True)
    save_model(model, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    _chmod_as_umask(out / WEIGHTS_FILE)  # safetensors creates it owner-only
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the cache holds plain float32 weights
    config.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _chmod_as_umask(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def _write_source(out: Path, gguf: Path, sha256: str, *, seconds: float) -> None:
    source = {"gguf": str(gguf.resolve()), "gguf_sha256": sha256,
              "dequantized_in_seconds": round(seconds, 1)}
    (out / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")


def _move_into_place(temp: Path, target: Path) -> None:
    """Rename the finished ``temp`` directory to ``target``; an existing complete one wins."""
    if target.exists():
        if (target / SOURCE_FILE).is_file():
            return  # another process finished first; theirs is as good as ours
        shutil.rmtree(target)  # an incomplete leftover from an older layout or a crash
    try:
        os.rename(temp, target)
    except OSError:
        if not (target / SOURCE_FILE).is_file():
            raise
