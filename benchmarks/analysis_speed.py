"""Time the loss-landscape grid (per grid point, extrapolated to 21x21) and t-SNE on one model.

    PYTHONPATH=. python benchmarks/analysis_speed.py --model minilm --samples 64 --grid 5 --chunks 1,4
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def main() -> None:
    from lm2vision.analysis import landscape as L
    from lm2vision.models import ModelConfig, create_backbone

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--patch-size", type=int, default=4)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--grid", type=int, default=5)
    ap.add_argument("--chunks", default="1,4")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    pretrained = not a.model.startswith("tiny-")
    m = create_backbone(ModelConfig(name=a.model, pretrained=pretrained, image_size=a.image_size,
                                    patch_size=a.patch_size))
    x = torch.randn(a.samples, 3, a.image_size, a.image_size)
    y = torch.randint(0, 10, (a.samples,))
    theta = L.trainable_params(m)
    d1, d2 = L.random_directions(theta, "random")
    g = torch.linspace(-1, 1, a.grid)
    print(f"{a.model}: {sum(t.numel() for t in theta.values()):,} perturbed params, {a.samples} images, "
          f"{torch.get_num_threads()} threads")
    for chunk in map(int, a.chunks.split(",")):
        t0 = time.perf_counter()
        L.evaluate_grid(m, F.cross_entropy, [(x, y)], d1, d2, g, g, chunk=chunk, progress=False)
        per = (time.perf_counter() - t0) / a.grid**2
        print(f"chunk {chunk}: {per:.3f} s/point -> 21x21 ~ {per * 441 / 60:.1f} min, 11x11 ~ {per * 121 / 60:.1f} min")


if __name__ == "__main__":
    main()
