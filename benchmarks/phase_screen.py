"""Time and peak memory of an ``lm2v phase`` screen, per model and per stage, at the seed's model sizes.

The models are built from configs with random weights (timing does not need pretrained weights; the
hub is not needed): the shapes of the seed's vision models (ResNet-50, ViT-B/16, DeiT-B, ConvNeXt-S,
Swin-S, EfficientNet-B1) and language models (BERT-base, DistilBERT, RoBERTa-base, GPT-2-medium,
ALBERT-base, XLNet-base). Captions go through the byte tokenizer of the in-memory configs (about 3x
the tokens of a BPE tokenizer: the timing errs on the slow side). The screen itself runs unchanged
(:func:`lm2vision.phase.screen.screen`); its per-model stages are wrapped with timers, so the table
shows that each model's kernels, AGOP and geometry are computed once, whatever the number of pairs.

Examples::

    python benchmarks/phase_screen.py --quick                       # CPU: tiny models, small samples
    python benchmarks/phase_screen.py --device cuda                 # the seed's shapes, 576 pairs, 64 NTK samples
    python benchmarks/phase_screen.py --device cuda --vision vit-b16 resnet-50 --language gpt2-medium --json out.json
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lm2vision.models import arch  # noqa: E402
from lm2vision.phase.screen import ScreenConfig  # noqa: E402

screen_mod = sys.modules["lm2vision.phase.screen"]  # the module (lm2vision.phase.screen is also a function)

_VIT_B = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
              image_size=224, patch_size=16)
PAPER_VISION = {  # config-built shapes of the seed's vision models (random weights)
    "resnet-50": dict(model_type="resnet", embedding_size=64, hidden_sizes=[256, 512, 1024, 2048],
                      depths=[3, 4, 6, 3], layer_type="bottleneck"),
    "vit-b16": dict(model_type="vit", **_VIT_B),
    "deit-b": dict(model_type="deit", **_VIT_B),
    "convnext-s": dict(model_type="convnext", hidden_sizes=[96, 192, 384, 768], depths=[3, 3, 27, 3]),
    "swin-s": dict(model_type="swin", image_size=224, patch_size=4, embed_dim=96, depths=[2, 2, 18, 2],
                   num_heads=[3, 6, 12, 24], window_size=7),
    "efficientnet-b1": dict(model_type="efficientnet", image_size=240, width_coefficient=1.0, depth_coefficient=1.1),
}
_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
PAPER_LANGUAGE = {  # config-built shapes of the seed's language models (random weights)
    "bert-base": dict(model_type="bert", vocab_size=30522, **_BASE),
    "distilbert": dict(model_type="distilbert", vocab_size=30522),
    "roberta-base": dict(model_type="roberta", vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                         pad_token_id=1, **_BASE),
    "gpt2-medium": dict(model_type="gpt2", n_embd=1024, n_layer=24, n_head=16, vocab_size=50257),
    "albert-base": dict(model_type="albert", vocab_size=30000, embedding_size=128, **_BASE),
    "xlnet-base": dict(model_type="xlnet", d_model=768, n_layer=12, n_head=12, d_inner=3072, vocab_size=32000),
}
QUICK = (["tiny-vit", "tiny-resnet", "tiny-convnext"], ["tiny-bert", "tiny-gpt2", "tiny-xlnet"])
STAGES = ("_layer_feats", "_embed", "_kernels", "_input_agop", "_layer_ratios")  # model_phase's steps


def register_paper_shapes() -> None:
    """Make the paper shapes loadable by name, as the in-memory configs are (random weights)."""
    arch.TINY_IMAGE_CONFIGS.update(PAPER_VISION)
    arch.TINY_CONFIGS.update(PAPER_LANGUAGE)


def peak_gb(device: torch.device) -> float:
    """Peak CUDA memory allocated since the last reset, or this process's peak resident set (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class Timings:
    """Seconds and peak memory per (model, stage), filled by the wrapped screen functions."""

    def __init__(self, device: torch.device):
        self.device, self.model = device, "?"
        self.rows: dict[tuple[str, str], dict] = defaultdict(lambda: {"calls": 0, "s": 0.0, "peak_gb": 0.0})

    @contextmanager
    def stage(self, name: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        row = self.rows[(self.model, name)]
        row["calls"] += 1
        row["s"] += time.perf_counter() - t0
        row["peak_gb"] = max(row["peak_gb"], peak_gb(self.device))

    def wrap(self, module, name: str, label: str, model_of=None) -> None:
        fn = getattr(module, name)

        def timed(*args, **kwargs):
            if model_of is not None:
                self.model = model_of(*args)
            with self.stage(label):
                return fn(*args, **kwargs)

        setattr(module, name, timed)


def run(cfg: ScreenConfig, device: torch.device) -> tuple[Timings, float]:
    """The screen with every per-model stage timed; returns the timings and the total seconds."""
    t = Timings(device)
    side_name = lambda side, *rest: side.name  # noqa: E731
    t.model = "data"
    t.wrap(screen_mod, "load_pairs", "paired samples")
    for kind in ("load_vision", "load_language"):
        t.wrap(screen_mod, kind, "load", model_of=lambda spec, *rest: spec)
    for name in STAGES:
        t.wrap(screen_mod, name, name.strip("_"), model_of=side_name)
    pair_row = screen_mod.pair_row

    def timed_pair(v, lang, *args):
        t.model = "pairs"
        with t.stage("pair_row"):
            return pair_row(v, lang, *args)

    screen_mod.pair_row = timed_pair
    t0 = time.perf_counter()
    screen_mod.screen(cfg, progress=False)
    return t, time.perf_counter() - t0


def table(t: Timings, total: float) -> str:
    lines = ["| model | stage | calls | seconds | peak GiB |", "|---|---|---|---|---|"]
    for (model, stage), r in t.rows.items():
        lines.append(f"| {model} | {stage} | {r['calls']} | {r['s']:.2f} | {r['peak_gb']:.2f} |")
    lines.append(f"| all | screen total | 1 | {total:.2f} | {max((r['peak_gb'] for r in t.rows.values()), default=0):.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models, small samples (a CPU smoke run)")
    p.add_argument("--vision", nargs="+", default=None, help=f"of {', '.join(PAPER_VISION)} (default all)")
    p.add_argument("--language", nargs="+", default=None, help=f"of {', '.join(PAPER_LANGUAGE)} (default all)")
    p.add_argument("--samples", type=int, default=None, help="paired samples (default 576; quick 64)")
    p.add_argument("--ntk-samples", type=int, default=None, help="NTK samples (default 64; quick 8)")
    p.add_argument("--method", default="auto", help="NTK method: auto | jacobian | vjp | projection")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    register_paper_shapes()
    vision, language = QUICK if args.quick else (list(PAPER_VISION), list(PAPER_LANGUAGE))
    vision, language = args.vision or vision, args.language or language
    samples = args.samples or (64 if args.quick else 576)
    ntk = args.ntk_samples or (8 if args.quick else 64)
    image, patch = (32, 8) if args.quick else (224, 16)
    cfg = ScreenConfig(vision=vision, language=language, samples=samples, ntk_samples=ntk, agop_samples=ntk,
                       image_size=image, patch_size=patch, device=args.device)
    cfg.ntk.method = args.method
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    t, total = run(cfg, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{len(vision)} vision x {len(language)} language, {samples} pairs, {ntk} NTK samples, {name}\n")
    print(table(t, total))
    if args.json:
        rows = [{"model": m, "stage": s, **r} for (m, s), r in t.rows.items()]
        Path(args.json).write_text(json.dumps({"total_s": total, "device": name, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
