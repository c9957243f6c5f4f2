"""Training an early-exit head by self-distillation (``restdecode train-drafter --kind early-exit``).

The targets are the model's own next-token distributions, not the corpus text, so the exit learns
what *this model* will say. Each step takes a batch of corpus windows, runs the frozen model once
(its final logits are the teacher, its hidden state after the exit layer the student's input), and
trains only the :class:`~restdecode.drafting.early_exit.ExitHead` on the KL divergence from the
teacher. A held-out split (windows never trained on) reports the loss and the top-1 agreement
(how often the exit's argmax is the model's), which is what greedy drafting needs.

Checkpoints go to the output directory (``head.safetensors`` + ``drafter.json``) every
``checkpoint_seconds``, at the end, and when the run is interrupted; ``resume`` continues from the
last one (the optimizer's moments start afresh).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from restdecode.drafting.early_exit import (DRAFTER_CONFIG, EARLY_EXIT, HEAD_WEIGHTS, ExitHead,
                                            decoder, layer_count, load_exit_head,
                                            model_fingerprint, read_drafter_config,
                                            save_exit_head)
from restdecode.errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class TrainingSettings:
    """How a drafter is trained (defaults fit SmolLM2-135M on 2 cores); ``layer`` is an early
    exit's, ``heads`` and ``vocabulary`` draft heads'."""

    layer: int = 0
    minutes: float = 30.0
    window: int = 128          # tokens per training window
    batch: int = 4             # windows per step
    learning_rate: float = 2e-3
    held_out: int = 8          # windows kept apart for evaluation
    evaluate_every: int = 25   # steps
    checkpoint_seconds: float = 60.0
    max_steps: int | None = None
    seed: int = 0
    heads: int = 3             # draft heads: tokens guessed ahead
    vocabulary: int = 8192     # draft heads: the most frequent tokens they choose among
    sample_windows: int = 256  # windows read first (the heads' vocabulary is counted on them)
    repeat: bool = False       # a finite pool of text: train over its windows again and again


@dataclass
class TrainingReport:
    """What a training run did: steps (in all, resumed ones included), seconds of this run, and
    the held-out loss and top-1 agreement at the end (and of the untrained exit)."""

    steps: int
    seconds: float
    loss: float
    agreement: float
    untrained_agreement: float
    out: Path


def windows(tokenizer: "PreTrainedTokenizerBase", documents: Iterable[str],
            length: int) -> Iterator[list[int]]:
    """Token windows of ``length`` from ``documents`` (each tokenized alone; a document's tail
    shorter than a window is dropped)."""
    for text in documents:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids) - length + 1, length):
            yield ids[start:start + length]


def _passes(pool: list[list[int]], seed: int) -> Iterator[list[int]]:
    """The windows of ``pool`` over and over, each pass in a new random order."""
    rng = random.Random(seed)
    while pool:
        order = list(pool)
        rng.shuffle(order)
        yield from order


def _batches(source: Iterator[list[int]], size: int) -> Iterator[torch.Tensor]:
    batch: list[list[int]] = []
    for window in source:
        batch.append(window)
        if len(batch) == size:
            yield torch.tensor(batch)
            batch = []


def _teacher_and_hidden(model: "PreTrainedModel", ids: torch.Tensor,
                        layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen model's log-probabilities and its hidden state after ``layer`` layers."""
    with torch.no_grad():
        output = model(input_ids=ids.to(model.device), output_hidden_states=True,
                       use_cache=False)
    return (F.log_softmax(output.logits.float(), dim=-1),
            output.hidden_states[layer].detach())


def _student(model: "PreTrainedModel", head: ExitHead, hidden: torch.Tensor) -> torch.Tensor:
    """The exit's log-probabilities from the hidden state after the exit layer (the head
    trains in float32 whatever the model's dtype)."""
    logits = model.lm_head(decoder(model).norm(head(hidden.float()).to(hidden.dtype)))
    return F.log_softmax(logits.float(), dim=-1)


def _distillation(teacher: torch.Tensor, student: torch.Tensor) -> tuple[torch.Tensor, float]:
    """KL(teacher || student) per token, and the top-1 agreement."""
    loss = F.kl_div(student.flatten(0, -2), teacher.flatten(0, -2), log_target=True,
                    reduction="batchmean")
    agreement = (student.argmax(-1) == teacher.argmax(-1)).float().mean().item()
    return loss, agreement


def evaluate(model: "PreTrainedModel", recipe, head: torch.nn.Module,
             held_out: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """Mean loss and top-1 agreement of ``head`` on the held-out (teacher, student input)
    pairs."""
    losses, agreements = [], []
    with torch.no_grad():
        for teacher, hidden in held_out:
            loss, agreement = _distillation(teacher, recipe.student(model, head, hidden))
            losses.append(loss.item())
            agreements.append(agreement)
    return sum(losses) / len(losses), sum(agreements) / len(agreements)


class EarlyExitRecipe:
    """What :func:`train_drafter` needs to train an exit head at ``layer``."""

    kind = EARLY_EXIT

    def __init__(self, model: "PreTrainedModel", layer: int) -> None:
        total = layer_count(model)
        if not 1 <= layer < total:
            raise ModelError(f"--layer must be in 1..{total - 1} for a model of {total} layers, "
                             f"got {layer}")
        self.layer, self.total = layer, total

    def new_head(self, model: "PreTrainedModel", sample: list[list[int]]) -> ExitHead:
        return ExitHead(model.config.hidden_size).to(model.device)

    def pairs(self, model: "PreTrainedModel", batch: torch.Tensor):
        return _teacher_and_hidden(model, batch, self.layer)

    def student(self, model: "PreTrainedModel", head: ExitHead, hidden: torch.Tensor):
        return _student(model, head, hidden)

    def facts(self) -> dict:
        return {"kind": EARLY_EXIT, "layer": self.layer, "layers": self.total}

    def load(self, model: "PreTrainedModel", out: Path, head: ExitHead) -> None:
        """The checkpoint in ``out`` into ``head`` (same model and layer, or ModelError)."""
        from safetensors.torch import load_file

        facts = read_drafter_config(out)
        if int(facts["layer"]) != self.layer:
            raise ModelError(f"{out} holds a head for layer {facts['layer']}, not "
                             f"{self.layer}; resume with --layer {facts['layer']}")
        load_exit_head(model, out)  # the same model (fingerprint), and readable
        head.load_state_dict(load_file(str(out / HEAD_WEIGHTS)))  # float32, as saved


def train_early_exit(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase",
                     documents: Iterable[str], out: str | Path, settings: TrainingSettings, *,
                     resume: bool = False, base_name: str = "", data_name: str = "",
                     progress: bool = True,
                     on_step: Callable[[int], None] | None = None) -> TrainingReport:
    """Train an exit head at ``settings.layer`` of ``model`` on ``documents`` and save it into
    ``out`` (module docstring; :func:`train_drafter` does the rest)."""
    return train_drafter(model, tokenizer, documents, out, settings,
                         EarlyExitRecipe(model, settings.layer), resume=resume,
                         base_name=base_name, data_name=data_name, progress=progress,
                         on_step=on_step)


def train_drafter(model: "PreTrainedModel", tokenizer: "PreTrainedTokenizerBase",
                  documents: Iterable[str], out: str | Path, settings: TrainingSettings,
                  recipe, *, resume: bool = False, base_name: str = "", data_name: str = "",
                  progress: bool = True,
                  on_step: Callable[[int], None] | None = None) -> TrainingReport:
    """Train the head ``recipe`` describes (an :class:`EarlyExitRecipe`, or draft heads'
    :class:`~restdecode.training.heads.HeadsRecipe`) on ``documents``, by distillation from
    ``model``'s own distributions, and save it into ``out``. ``on_step(step)`` is called after
    every step (tests use it to interrupt a run). ModelError when there is not enough text for
    the held-out split and one batch, or when ``resume`` finds a head of another model or
    shape. A resumed run reads the data from its start again."""
    from tqdm.auto import tqdm

    torch.manual_seed(settings.seed)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    out = Path(out)
    source = windows(tokenizer, documents, settings.window)
    sample = list(islice(source, settings.sample_windows))  # e.g. the heads' vocabulary
    source = chain(sample, source)
    head, done = recipe.new_head(model, sample), 0
    if resume and (out / DRAFTER_CONFIG).is_file():
        recipe.load(model, out, head)
        done = int(read_drafter_config(out).get("steps", 0))
    head.float().train()
    held_out = [recipe.pairs(model, batch)
                for batch in islice(_batches(source, settings.batch),
                                    max(1, settings.held_out // settings.batch))]
    if not held_out:
        raise ModelError(f"not enough text: the held-out split needs {settings.held_out} windows "
                         f"of {settings.window} tokens")
    if settings.repeat:  # every window but the held-out ones, reshuffled at each pass
        source = _passes(list(source), settings.seed)
    untrained = evaluate(model, recipe, recipe.new_head(model, sample).float(), held_out)[1]
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    facts = recipe.facts() | {
        "base_model": base_name, "base_fingerprint": model_fingerprint(model), "data": data_name,
        "window": settings.window, "batch": settings.batch,
        "learning_rate": settings.learning_rate}
    started = last_save = time.monotonic()
    deadline = started + settings.minutes * 60
    step, loss_value, agreement = done, float("nan"), float("nan")

    def save(held: tuple[float, float] | None = None) -> None:
        facts.update(steps=step, untrained_agreement=untrained)
        if held is not None:
            facts.update(held_out_loss=held[0], held_out_agreement=held[1])
        save_exit_head(out, head, facts)

    bar = tqdm(desc="train-drafter", unit="step", disable=not progress,
               total=settings.max_steps)
    try:
        for batch in _batches(source, settings.batch):
            if time.monotonic() >= deadline or (settings.max_steps is not None
                                                and step - done >= settings.max_steps):
                break
            teacher, student_input = recipe.pairs(model, batch)
            loss, _ = _distillation(teacher, recipe.student(model, head, student_input))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            bar.update(1)
            if (step - done) % settings.evaluate_every == 0:
                loss_value, agreement = evaluate(model, recipe, head, held_out)
                bar.set_postfix(loss=f"{loss_value:.3f}", top1=f"{agreement:.1%}")
            if time.monotonic() - last_save >= settings.checkpoint_seconds:
                save()
                last_save = time.monotonic()
            if on_step is not None:
                on_step(step)
    except KeyboardInterrupt:
        save()  # an interrupted run keeps what it learned
        raise
    finally:
        bar.close()
    if step == done:
        raise ModelError(f"not enough text to train on: every window of {settings.window} "
                         f"tokens went to the held-out split")
    loss_value, agreement = evaluate(model, recipe, head, held_out)
    save((loss_value, agreement))
    return TrainingReport(step, time.monotonic() - started, loss_value, agreement, untrained, out)
