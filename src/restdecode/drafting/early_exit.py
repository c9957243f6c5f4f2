"""Early-exit self-speculation (issue 17): the target's own first layers draft for it.

:func:`early_exit_model` builds, from a loaded causal LM, a model that runs only its first ``layer``
decoder layers, then an :class:`ExitHead` (a residual linear adapter, trained by
``restdecode train-drafter``), then the model's own final norm and ``lm_head``. It shares every
weight with the target (only the adapter is new), so it costs no memory, and it is an ordinary
transformers model to the rest of the project: :class:`~restdecode.drafting.DraftModelDrafter` drafts
with it in a session of its own, and the draft-model planner
(:class:`~restdecode.drafting.draft_planner.PricedDraftModel`) prices its forwards by its own
latency profile (about ``layer / layers`` of the target's) and merges it with retrieval.

Its session recomputes layers < ``layer`` for the tokens it is fed, rather than reusing the
target's KV entries of those layers: with transformers' cache that would mean sharing one cache
object between two sequences of different lengths. The cost is stated in bench/RESULTS.md.

A trained head is a directory (:func:`save_exit_head` / :func:`load_exit_head`): ``head.safetensors``
and ``drafter.json`` (kind, layer, training facts and the base model's fingerprint, which
:func:`load_exit_head` checks: a head trained on another model is refused).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from restdecode.errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

DRAFTER_CONFIG = "drafter.json"
HEAD_WEIGHTS = "head.safetensors"
EARLY_EXIT = "early-exit"


class ExitHead(nn.Module):
    """``h + W h + b`` on the hidden state after the exit layer, before the model's final norm;
    zero-initialised, so an untrained head is the plain early exit."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.adapter = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.adapter.weight)
        nn.init.zeros_(self.adapter.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.adapter(hidden)


class _HeadThenNorm(nn.Module):
    """Stands in for the base model's final norm: the exit head, then that norm."""

    def __init__(self, head: ExitHead, norm: nn.Module) -> None:
        super().__init__()
        self.head, self.norm = head, norm

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(self.head(hidden))


def decoder(model: "PreTrainedModel") -> nn.Module:
    """The decoder stack of a causal LM (``model.model`` with ``layers`` and ``norm``), or a
    ModelError naming what is missing."""
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "norm"):
        raise ModelError(f"{type(model).__name__} has no decoder stack at .model.layers and "
                         ".model.norm: early exit supports Llama-style causal LMs (Llama, Qwen2, "
                         "Gemma 3, SmolLM2)")
    return inner


def layer_count(model: "PreTrainedModel") -> int:
    """How many decoder layers ``model`` has."""
    return len(decoder(model).layers)


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` that shares its parameters and buffers but owns its table of
    submodules (replacing one in the copy leaves the original untouched) and has no hooks (a
    hook on the original, e.g. a benchmark's forward counter, must not fire for the copy)."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    for name, value in vars(module).items():
        if "hooks" in name and isinstance(value, dict):
            setattr(clone, name, type(value)())
    return clone


def early_exit_model(model: "PreTrainedModel", layer: int,
                     head: ExitHead | None = None) -> "PreTrainedModel":
    """``model`` cut after its first ``layer`` decoder layers, through ``head`` (default: an
    untrained one), its final norm and its ``lm_head``; every weight shared with ``model``."""
    inner = decoder(model)
    total = len(inner.layers)
    if not 1 <= layer < total:
        raise ModelError(f"the exit layer must be in 1..{total - 1} for a model of {total} "
                         f"layers, got {layer}")
    head = copy.deepcopy(head) if head is not None else ExitHead(model.config.hidden_size)
    head = head.to(device=model.device, dtype=model.dtype)
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = layer
    if getattr(config, "layer_types", None) is not None:  # e.g. Gemma 3's sliding/full pattern
        config.layer_types = list(config.layer_types)[:layer]
    exit_inner = _shallow_copy(inner)
    exit_inner.layers = nn.ModuleList(list(inner.layers)[:layer])
    exit_inner.norm = _HeadThenNorm(head, inner.norm)
    exit_inner.config = config
    exit_model = _shallow_copy(model)
    exit_model.model = exit_inner
    exit_model.config = config
    exit_model.exit_head = head  # reachable for training and saving
    return exit_model


def model_fingerprint(model: "PreTrainedModel") -> str:
    """A short digest of ``model``'s architecture (its config) and weights (a sample of its
    embedding table and of its last layer's parameters): a trained head records it, and is
    refused on any other model."""
    digest = hashlib.sha256()
    config = model.config.to_dict()
    for volatile in ("_name_or_path", "torch_dtype", "dtype", "transformers_version",
                     "_attn_implementation", "_attn_implementation_autoset"):
        config.pop(volatile, None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    inner = decoder(model)
    samples = [model.get_input_embeddings().weight[:16]]
    samples += [parameter.reshape(-1)[:256] for parameter in inner.layers[-1].parameters()]
    for sample in samples:  # rounded to bf16: a float32 and a bf16 load of one model agree
        digest.update(sample.detach().to(torch.bfloat16).float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def is_trained_drafter(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory written by ``restdecode train-drafter``."""
    return (Path(path) / DRAFTER_CONFIG).is_file()


def save_exit_head(directory: str | os.PathLike, head: ExitHead, facts: dict[str, Any]) -> Path:
    """Write ``head`` and ``facts`` (kind, layer, base fingerprint, training facts) into
    ``directory``: the weights first, the config last (its presence marks a complete save)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().float().cpu().contiguous()
             for name, tensor in head.state_dict().items()}
    save_file(state, str(directory / (HEAD_WEIGHTS + ".tmp")))
    os.replace(directory / (HEAD_WEIGHTS + ".tmp"), directory / HEAD_WEIGHTS)
    config_tmp = directory / (DRAFTER_CONFIG + ".tmp")
    config_tmp.write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
    os.replace(config_tmp, directory / DRAFTER_CONFIG)
    return directory


def read_drafter_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``drafter.json`` of a trained drafter directory, or a ModelError saying what is
    wrong with it."""
    path = Path(directory) / DRAFTER_CONFIG
    try:
        facts = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{directory} is not a trained drafter (no {DRAFTER_CONFIG}); make one "
                         "with `restdecode train-drafter`") from None
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot read {path}: {error}") from None
    shapes = {EARLY_EXIT: "layer", "heads": "heads", "chain": "heads"}  # integer shape fields
    if (not isinstance(facts, dict) or facts.get("kind") not in shapes
            or not isinstance(facts.get(shapes[facts["kind"]]), int)):
        raise ModelError(f"{path} does not describe a trained drafter (kind {EARLY_EXIT} with an "
                         f"integer layer, or heads or chain with an integer number of heads)")
    return facts


def check_base_model(model: "PreTrainedModel", directory: str | os.PathLike,
                     facts: dict[str, Any]) -> None:
    """ModelError unless the drafter in ``directory`` was trained on ``model``."""
    fingerprint = model_fingerprint(model)
    if facts.get("base_fingerprint") != fingerprint:
        raise ModelError(
            f"the drafter in {directory} was trained on model {facts.get('base_model')!r} "
            f"(fingerprint {facts.get('base_fingerprint')}), not on this one "
            f"({getattr(model.config, '_name_or_path', '') or type(model).__name__}, fingerprint "
            f"{fingerprint}); train one for this model with `restdecode train-drafter`")


def load_weights(module: nn.Module, directory: str | os.PathLike) -> None:
    """The weights saved in ``directory`` into ``module``, or a ModelError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        module.load_state_dict(load_file(str(Path(directory) / HEAD_WEIGHTS)))
    except (OSError, RuntimeError, KeyError, SafetensorError) as error:
        raise ModelError(f"cannot load the head in {directory}: {error}") from None


def load_exit_head(model: "PreTrainedModel", directory: str | os.PathLike
                   ) -> tuple["PreTrainedModel", dict[str, Any]]:
    """The early-exit model of ``model`` with the head trained in ``directory``, and its facts.
    ModelError when the head was trained on another model (fingerprints differ) or is damaged."""
    facts = read_drafter_config(directory)
    if facts["kind"] != EARLY_EXIT:
        raise ModelError(f"{directory} holds {facts['kind']}, not an {EARLY_EXIT} head")
    check_base_model(model, directory, facts)
    head = ExitHead(model.config.hidden_size)
    load_weights(head, directory)
    return early_exit_model(model, facts["layer"], head), facts
