"""Tree verification on top of a KV cache, and committing the accepted path into that cache.

One verification forward feeds the pending token (slot 0) and every draft node (slot i+1 = node i)
to the model at once. A 4D additive attention mask lets each slot see the whole past plus its own
ancestors in the tree, and ``position_ids`` place every slot at ``past_length + depth``: the model
computes, for every slot, exactly what sequential decoding of that slot's path would compute.

Models with sliding-window layers (Gemma 3, Qwen2 with ``use_sliding_window``) get one mask per
layer type (transformers accepts a ``{layer_type: mask}`` mapping); their cache layers hold only the
last ``sliding_window - 1`` positions, and the mask is built against what each layer really holds.

:func:`prefill` fills a new cache with the prompt; after acceptance, :func:`commit` keeps the KV entries of the accepted slots, gathered to consecutive
positions, and drops the rest, so the next step starts from the cache a sequential run would have.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from restdecode.compiled import CompiledModel, eager, is_compiled
from restdecode.drafting.tree import CompiledTree, DraftTree
from restdecode.errors import DecodingError

FULL, SLIDING = "full_attention", "sliding_attention"
_SUPPORTED_ATTENTION = ("sdpa", "eager")


def new_cache(model: PreTrainedModel) -> DynamicCache:
    """An empty KV cache for ``model``, ready for tree verification and :func:`commit`.

    Sliding-window layers record their past beyond the window until :func:`commit` (or
    :func:`trim_cache`) restricts them again, so rejected tree slots never push out past tokens.
    """
    _check_supported(model)
    cache = DynamicCache(config=model.config)
    for layer in cache.layers:
        if hasattr(layer, "activate_past_recording"):
            layer.activate_past_recording()
    return cache


def cache_kwargs(model: PreTrainedModel, cache: DynamicCache) -> dict[str, DynamicCache]:
    """``cache`` as the keyword ``model``'s forward takes it: ``cache`` in transformers >= 5.24,
    ``past_key_values`` before (5.24 still accepts the old name, with a FutureWarning, until 5.40)."""
    return {_cache_keyword(type(eager(model))): cache}


@lru_cache(maxsize=None)
def _cache_keyword(model_class: type) -> str:
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def prefill(model: PreTrainedModel, cache: DynamicCache, prompt_ids: list[int], *,
            history: int = 0, hidden: list | None = None) -> torch.Tensor:
    """Run the prompt through the model into ``cache``; float32 logits after its last token.

    A compiled model's prefill runs eagerly: once per generation, at any prompt length.
    ``history``: as in :func:`trim_cache`. ``hidden``: a list that receives the model's final
    hidden state (after its last norm) at the prompt's last token."""
    input_ids = torch.tensor([prompt_ids], device=model.device)
    output = eager(model)(input_ids=input_ids, use_cache=True, logits_to_keep=1,
                          output_hidden_states=hidden is not None, **cache_kwargs(model, cache))
    trim_cache(cache, history)
    if hidden is not None:
        hidden.append(output.hidden_states[-1][0, -1])
    return output.logits[0, -1].float()


def _check_supported(model: PreTrainedModel) -> None:
    implementation = model.config._attn_implementation
    if implementation not in _SUPPORTED_ATTENTION:
        raise DecodingError(
            f"attention implementation {implementation!r} cannot take a tree mask; "
            f"load the model with attn_implementation in {_SUPPORTED_ATTENTION}"
        )
    unsupported = set(_layer_types(model)) - {FULL, SLIDING}
    if unsupported:
        raise DecodingError(f"layer types {sorted(unsupported)} are not supported by tree verification")


def _layer_types(model: PreTrainedModel) -> list[str]:
    config = model.config.get_text_config(decoder=True)
    types = getattr(config, "layer_types", None)
    return list(types) if types is not None else [FULL] * config.num_hidden_layers


def verify(
    model: PreTrainedModel,
    cache: DynamicCache,
    pending_token: int,
    tree: CompiledTree,
    past_length: int,
    *,
    hidden: list | None = None,
) -> torch.Tensor:
    """Logits ``(1 + n, vocab)`` float32 at every slot of ``tree``, from one forward pass.

    ``cache`` holds ``past_length`` positions (the context without the pending token); after the
    call it also holds the ``1 + n`` slots, to be resolved by :func:`commit`. ``hidden``: a list
    that receives the model's final hidden states (after its last norm) ``(1 + n, H)``.
    """
    device = model.device
    input_ids = torch.cat(
        [torch.tensor([pending_token], device=device), tree.node_tokens.to(device)]
    ).unsqueeze(0)
    positions = past_length + tree.depth_offsets.to(device)
    # A chain (a plain step included) needs nothing but the causal mask the model builds itself,
    # and the unmasked attention path is the one plain decoding takes: cheaper, and the same
    # kernels as the baseline. Sliding-window layers keep their own, tree-aware masks. A
    # compiled forward always gets the mask: one graph for chains and trees instead of two.
    all_full = all(layer_type == FULL for layer_type in _layer_types(model))
    unmasked = all_full and _is_chain(tree) and not is_compiled(model)
    mask = None if unmasked else tree_attention_mask(model, cache, tree, past_length)
    output = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions.unsqueeze(0),
        use_cache=True,
        output_hidden_states=hidden is not None,
        **cache_kwargs(model, cache),
    )
    if hidden is not None:
        hidden.append(output.hidden_states[-1][0])
    return output.logits[0].float()


def _is_chain(tree: CompiledTree) -> bool:
    """Every slot is the child of the slot before it (slot 0 alone is a chain too)."""
    return tree.slot_parents == list(range(-1, tree.num_slots - 1))


def tree_attention_mask(
    model: PreTrainedModel, cache: DynamicCache, tree: CompiledTree, past_length: int
) -> torch.Tensor | dict[str, torch.Tensor]:
    """The additive 4D mask(s) of one verification forward: one tensor, or one per layer type."""
    dtype, device = model.dtype, model.device
    layer_types = _layer_types(model)
    masks = {}
    for layer_type in dict.fromkeys(layer_types):
        layer = cache.layers[layer_types.index(layer_type)]
        window = getattr(layer, "sliding_window", None) if layer_type == SLIDING else None
        # A sliding layer keeping history (trim_cache) still shows a forward only its last
        # ``window - 1`` past positions (DynamicSlidingWindowLayer.update): the mask's too.
        held = min(_held_length(layer), window - 1) if window is not None else past_length
        visible = _visible(tree, past_length, held, window)
        masks[layer_type] = _additive(visible.to(device), dtype)
    if set(masks) == {FULL}:
        return masks[FULL]
    return masks


def _held_length(layer) -> int:
    """Positions a cache layer currently stores (a sliding layer: at most ``window - 1``)."""
    keys = getattr(layer, "keys", None)
    return 0 if keys is None or keys.numel() == 0 else int(keys.shape[-2])


def _visible(tree: CompiledTree, past_length: int, held: int, window: int | None) -> torch.Tensor:
    """Bool ``(1+n, held+1+n)``: may slot i see key j (the last ``held`` past positions, then slots)."""
    depth = tree.depth_offsets.cpu()
    query_pos = past_length + depth
    key_pos = torch.cat([torch.arange(past_length - held, past_length), query_pos])
    visible = torch.cat(
        [torch.ones(len(depth), held, dtype=torch.bool), tree.ancestor_mask.cpu()], dim=1
    )
    if window is not None:
        # Same rule as transformers' sliding_window_overlay: kv > q - window.
        visible &= key_pos.unsqueeze(0) > query_pos.unsqueeze(1) - window
    return visible


def _additive(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Additive rather than boolean: eager attention adds the mask to the scores.
    mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    return mask[None, None]


def commit(cache: DynamicCache, accepted_slots: Sequence[int], num_slots: int, *,
           history: int = 0) -> None:
    """Keep the KV entries of ``accepted_slots`` (starting with slot 0) of the last verification.

    The last ``num_slots`` entries of every layer are the slots of that forward; the accepted
    ones are gathered in order right after the past, the others dropped. Sliding layers are then
    restricted to their window again (plus ``history``, as in :func:`trim_cache`).
    """
    slots = list(accepted_slots)
    is_prefix = slots == list(range(len(slots)))  # plain steps and chain drafts: nothing to move
    for layer in cache.layers:
        if not getattr(layer, "is_initialized", False):
            continue
        held = layer.keys.shape[-2] - num_slots
        if not is_prefix:
            # Gather the accepted slots into place in the existing buffers: only the tree's
            # tail is copied, never the whole past.
            index = torch.as_tensor(slots, device=layer.keys.device) + held
            layer.keys[..., held:held + len(slots), :] = layer.keys.index_select(-2, index)
            layer.values[..., held:held + len(slots), :] = layer.values.index_select(-2, index)
        layer.keys = layer.keys[..., : held + len(slots), :]
        layer.values = layer.values[..., : held + len(slots), :]
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length += len(slots) - num_slots
    trim_cache(cache, history)


def trim_cache(cache: DynamicCache, history: int = 0) -> None:
    """Restrict sliding-window layers to the ``window - 1`` positions the next forward needs,
    plus ``history`` older ones (what a session must keep to be truncated back by ``history``
    positions, see :func:`truncate_cache`)."""
    for layer in cache.layers:
        window = getattr(layer, "sliding_window", None)
        if window is None or not getattr(layer, "is_initialized", False):
            continue
        keep = window - 1 + history
        if layer.keys.shape[-2] > keep:
            layer.keys = layer.keys[..., -keep:, :]
            layer.values = layer.values[..., -keep:, :]


def truncate_cache(cache: DynamicCache, cached_length: int, length: int) -> None:
    """Drop every position from ``length`` on of ``cache``, which holds ``cached_length``
    (committed or not); DecodingError, before changing anything, when a sliding-window layer no
    longer holds the ``window - 1`` positions before ``length`` that the next forward needs
    (keep them with ``history`` in :func:`commit` / :func:`prefill`)."""
    if not 0 <= length <= cached_length:
        raise DecodingError(f"cannot truncate a cache of {cached_length} positions to {length}")
    removed = cached_length - length
    layers = [layer for layer in cache.layers if getattr(layer, "is_initialized", False)]
    for layer in layers:
        window = getattr(layer, "sliding_window", None)
        if window is not None and _held_length(layer) - removed < min(length, window - 1):
            raise DecodingError(
                f"cannot roll back to {length} positions: a sliding-window layer (window "
                f"{window}) holds only the last {_held_length(layer)} of {cached_length}; open "
                f"the session with a larger rollback history")
    for layer in layers:
        kept = _held_length(layer) - removed
        layer.keys = layer.keys[..., :kept, :]
        layer.values = layer.values[..., :kept, :]
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length -= removed


def build_graphs(model: CompiledModel, *, cache_length: int = 16, hidden: bool = False) -> float:
    """Run once every kind of verification forward a decode loop makes, so that a compiled
    model's graphs are built before anything is timed; returns the seconds it took.

    The kinds: one slot (a plain step) or several, on a cache that is contiguous (after a step
    that kept all its slots) or a view (after a step that dropped some). Each is one graph;
    ``hidden`` builds them also for forwards that keep the hidden states (draft heads).
    """
    started = time.perf_counter()
    plain = DraftTree.empty().compile(model.device)
    tree = DraftTree(np.array([3, 4, 5]), np.array([-1, -1, 0])).compile(model.device)
    with torch.inference_mode():
        for keep_hidden in (False, True) if hidden else (False,):
            cache = new_cache(model)
            prefill(model, cache, list(range(1, cache_length + 1)))
            past = cache_length
            # (tree, slots kept): contiguous cache in the first two forwards, a view in the others.
            for compiled_tree, kept in ((plain, [0]), (tree, []), (plain, [0]), (tree, [0, 2]),
                                        (tree, [])):
                verify(model, cache, 2, compiled_tree, past, hidden=[] if keep_hidden else None)
                commit(cache, kept, compiled_tree.num_slots)
                past += len(kept)
    return time.perf_counter() - started
