"""Train a drafter made of the model's own layers, by self-distillation, on this machine.

kinds:
  early-exit   an exit head after --layer of the model's decoder layers: a residual linear
               adapter before the model's own final norm and lm_head, trained to predict the
               model's own next-token distribution (not the corpus text). At decoding time the
               model's first --layer layers and the head draft for the whole model; use the
               output directory as --draft-model of generate, chat, bench or serve.
  heads        --heads draft heads (Medusa-1 style) on the model's last hidden state: head k
               guesses the token k places after the next one, over the --vocabulary most
               frequent tokens of the training text; trained to predict the model's own
               distributions. They cost a small matrix product per step, no forward.
  chain        a draft chain (Hydra / EAGLE style) of --heads depths: like heads, but depth d
               also reads the token drafted before it (the first reads the pending token), so
               it guesses what follows the tokens actually drafted. Its tree grows its most
               probable paths; each depth costs a small matrix product for the paths it grows.

--self-generate N trains on the model's own words instead of the data's: the first N texts of
--data become user prompts (cut to 96 tokens), the model's greedy answers (--answer-tokens
each) are decoded first with batched plain steps (a progress bar; kept in OUT/generated.jsonl
and reused by --resume), and training then runs over those answers, pass after pass, for
--minutes. At decoding time a drafter drafts after the model's own words, which are far more
predictable to it than human text.

The run trains for --minutes (or --max-steps), shows the loss and the held-out top-1 agreement
(how often the exit's choice is the model's), saves a checkpoint every minute and when
interrupted (Ctrl-C keeps the last one), and --resume continues from it. The output directory
holds head.safetensors and drafter.json, which records the base model's fingerprint: loading the
head onto another model is refused.

data (as build-datastore's sources):
  sharegpt            ShareGPT conversations (fetched asset)
  code:DIR            every *.py under DIR; code:stdlib for the standard library
  jsonl:PATH:FIELD    the string FIELD of each line of a JSON-lines file
  text:GLOB           every file matching GLOB

examples:
  restdecode train-drafter --model smollm2-135m-instruct --kind early-exit --data sharegpt \\
      --layer 8 --out smollm2-exit8
  restdecode generate --draft-model smollm2-exit8 "Write a haiku about tea"
"""

from __future__ import annotations

import argparse
import sys


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``train-drafter`` arguments."""
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="model to draft for: asset name or Hugging Face directory "
                             "(transformers; default: smollm2-135m-instruct)")
    parser.add_argument("--kind", choices=["early-exit", "heads", "chain"], default="early-exit",
                        help="what to train (default: early-exit)")
    parser.add_argument("--data", default="sharegpt",
                        help="training text (see 'data' above; default: sharegpt)")
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--layer", type=int, default=None,
                        help="exit after this many decoder layers (default: a quarter of them)")
    parser.add_argument("--heads", type=int, default=3,
                        help="heads, chain: tokens guessed ahead (default: 3)")
    parser.add_argument("--vocabulary", type=int, default=8192,
                        help="heads, chain: the most frequent tokens they choose among "
                             "(default: 8192)")
    parser.add_argument("--minutes", type=float, default=30.0,
                        help="training time budget in minutes (default: 30)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many steps of this run (default: the time budget)")
    parser.add_argument("--window", type=int, default=128,
                        help="tokens per training window (default: 128)")
    parser.add_argument("--batch", type=int, default=4, help="windows per step (default: 4)")
    parser.add_argument("--learning-rate", type=float, default=2e-3,
                        help="AdamW learning rate (default: 0.002)")
    parser.add_argument("--self-generate", type=int, default=0, metavar="N",
                        help="train on the model's greedy answers to the first N texts of "
                             "--data (default: 0, the texts themselves)")
    parser.add_argument("--answer-tokens", type=int, default=192,
                        help="with --self-generate: tokens per answer (default: 192)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint in --out")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Train, save, and print what the head reached on the held-out split."""
    for name in ("minutes", "window", "batch", "learning_rate", "heads", "vocabulary"):
        if getattr(args, name) <= 0:
            print(f"restdecode train-drafter: --{name.replace('_', '-')} must be > 0",
                  file=sys.stderr)
            return 2
    if args.self_generate < 0 or args.answer_tokens < 1:
        print("restdecode train-drafter: --self-generate must be >= 0 and --answer-tokens >= 1",
              file=sys.stderr)
        return 2
    if args.max_steps is not None and args.max_steps < 1:
        print("restdecode train-drafter: --max-steps must be >= 1", file=sys.stderr)
        return 2
    from restdecode.datastore.sources import open_source
    from restdecode.drafting.early_exit import layer_count
    from restdecode.models import load
    from restdecode.training.early_exit import TrainingSettings, train_early_exit
    from restdecode.training.heads import train_heads

    corpus = open_source(args.data)  # a malformed spec fails before the model loads
    model, tokenizer = load(args.model, quiet=args.quiet)
    layer = args.layer if args.layer is not None else max(1, layer_count(model) // 4)
    settings = TrainingSettings(layer=layer, minutes=args.minutes, window=args.window,
                                batch=args.batch, learning_rate=args.learning_rate,
                                max_steps=args.max_steps, seed=args.seed, heads=args.heads,
                                vocabulary=args.vocabulary, repeat=args.self_generate > 0)
    documents, data_name = corpus.documents(), args.data
    if args.self_generate:
        from pathlib import Path

        from restdecode.training.selfgen import GENERATED_FILE, generated_documents

        documents = generated_documents(model, tokenizer, documents, args.self_generate,
                                        new_tokens=args.answer_tokens,
                                        cache=Path(args.out) / GENERATED_FILE,
                                        progress=not args.quiet)
        data_name = (f"{args.data}: the model's greedy answers ({args.answer_tokens} tokens) "
                     f"to its first {args.self_generate} texts")
    from restdecode.training.chain import train_chain

    train = {"heads": train_heads, "chain": train_chain}.get(args.kind, train_early_exit)
    report = train(model, tokenizer, documents, args.out, settings, resume=args.resume,
                   base_name=args.model, data_name=data_name, progress=not args.quiet)
    vocabulary = min(args.vocabulary, model.config.vocab_size)
    what = {"heads": f"{args.heads} draft heads over {vocabulary} tokens",
            "chain": f"a draft chain of {args.heads} over {vocabulary} tokens"}.get(
        args.kind, f"early exit after layer {layer} of {layer_count(model)}")
    print(f"{report.out}: {what}, {report.steps} steps ({report.seconds:.0f} s this run); "
          f"held-out top-1 agreement {report.agreement:.1%} (untrained: "
          f"{report.untrained_agreement:.1%}), loss {report.loss:.3f}")
    return 0
