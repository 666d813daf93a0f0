"""The embedded default: all-MiniLM-L6-v2 from the PyPI package, offline."""
from __future__ import annotations

import torch
from safetensors.torch import load_file

from lm2vision.models import ModelConfig, create_backbone, embedded_minilm_path


def test_minilm_loads_offline_and_runs_forward():
    m = create_backbone(ModelConfig())  # the default: minilm, pretrained, 32 px, 4 px patches
    assert (m.num_blocks, m.width, m.num_tokens, m.spec.family) == (6, 384, 64, "bert")
    ref = load_file(str(embedded_minilm_path() / "model.safetensors"))
    key = "encoder.layer.3.attention.self.query.weight"
    ref_key = key if key in ref else f"bert.{key}"
    torch.testing.assert_close(m.lm.encoder.layer[3].attention.self.query.weight, ref[ref_key].float())
    with torch.no_grad():
        y = m.eval()(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10) and torch.isfinite(y).all()


def test_scratch_never_reads_the_weights(monkeypatch):
    import transformers

    def boom(*a, **k):
        raise AssertionError("scratch must not load pretrained weights")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", boom)
    m = create_backbone(ModelConfig(pretrained=False))
    assert m.num_blocks == 6
    ref = load_file(str(embedded_minilm_path() / "model.safetensors"))
    w = ref.get("encoder.layer.0.attention.self.query.weight", ref.get("bert.encoder.layer.0.attention.self.query.weight"))
    assert not torch.allclose(m.lm.encoder.layer[0].attention.self.query.weight, w.float())
