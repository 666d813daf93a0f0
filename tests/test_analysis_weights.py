"""Weight statistics on constructed tensors with known answers."""
import math

import pytest
import torch
from torch import nn

from lm2vision.analysis import weights as W
from lm2vision.errors import Lm2vError


def test_outlier_share_of_constructed_tensor():
    w = torch.zeros(10, 10)
    w[0, :3] = 2.0  # 3 above threshold 1
    w[1, 0] = -1.5  # 1 below -1
    w[2, 0] = 1.0  # exactly at the threshold: not an outlier (strict >)
    assert W.outlier_share(w, 1.0) == pytest.approx(4 / 100)
    assert W.channel_outlier_share(w, 1.0) == pytest.approx(2 / 10)
    s = W.tensor_stats("blocks.3.mlp.weight", w)
    assert (s.abs_outliers, s.block, s.max_abs) == (4, "block.3", 2.0)


def test_z_outliers_and_kurtosis_scale_free():
    w = torch.zeros(1000)
    w[:500] = 1.0
    w[500:] = -1.0  # symmetric two-point: excess kurtosis -2, no z-outliers
    assert W.excess_kurtosis(w) == pytest.approx(-2.0)
    assert W.z_outlier_count(w, 3.0) == 0
    w[0] = 100.0  # one spike
    assert W.z_outlier_count(w, 6.0) == 1
    assert W.z_outlier_count(w * 1e-3, 6.0) == 1  # scale free
    assert W.outlier_share(w * 1e-3, 1.0) == 0.0  # the authors' definition is not
    g = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    assert abs(W.excess_kurtosis(g)) < 0.05


def test_block_assignment_for_families():
    assert W.block_of("h.11.attn.c_attn.weight") == "block.11"  # GPT-2
    assert W.block_of("encoder.layer.2.output.dense.weight") == "block.2"  # BERT
    assert W.block_of("model.layers.0.mlp.up_proj.weight") == "block.0"  # Llama
    assert W.block_of("blocks.5.ln_1.weight") == "block.5"
    assert W.block_of("patch_embed.proj.weight") == "other"
    assert W.block_of("head.weight") == "other"


def test_conv1d_is_transposed_to_out_in():
    from transformers.pytorch_utils import Conv1D

    m = nn.Module()
    m.c = Conv1D(nf=4, nx=3)  # weight stored (in=3, out=4)
    m.lin = nn.Linear(3, 4)  # weight (out=4, in=3)
    with torch.no_grad():
        m.c.weight.zero_()
        m.c.weight[:, 0] = 5.0  # every input feeds output channel 0 only
        m.lin.weight.zero_()
        m.lin.weight[0, :] = 5.0
    ws = W.model_weights(m)
    assert ws["c.weight"].shape == (4, 3) and ws["lin.weight"].shape == (4, 3)
    assert torch.equal(ws["c.weight"], ws["lin.weight"])
    st = W.weight_stats(m, threshold=1.0)
    by = {t.name: t for t in st.tensors}
    assert by["c.weight"].channel_outlier_share == by["lin.weight"].channel_outlier_share == pytest.approx(0.25)
    # same via a state dict and an explicit transposed set
    sd = {n: p.detach() for n, p in m.named_parameters()}
    st2 = W.weight_stats(sd, transposed=W.conv1d_names(m))
    assert {t.name: t.channel_outlier_share for t in st2.tensors} == {t.name: t.channel_outlier_share for t in st.tensors}


def test_aggregate_per_block_and_overall_and_frozen_excluded():
    m = nn.Module()
    m.blocks = nn.ModuleList([nn.Linear(10, 10, bias=False), nn.Linear(10, 10, bias=False)])
    m.norm = nn.LayerNorm(10)
    with torch.no_grad():
        m.blocks[0].weight.fill_(0.1)
        m.blocks[0].weight[0, :5] = 3.0
        m.blocks[1].weight.fill_(0.1)
        m.norm.weight.fill_(2.0)  # LayerNorm counted (the authors include it)
        m.norm.bias.zero_()
    st = W.weight_stats(m)
    assert st.blocks() == ["block.0", "block.1", "other"]
    assert st.aggregate("block.0")["abs_outlier_share"] == pytest.approx(5 / 100)
    assert st.aggregate("block.1")["abs_outlier_share"] == 0.0
    assert st.aggregate("other")["abs_outlier_share"] == pytest.approx(10 / 20)
    assert st.aggregate()["abs_outlier_share"] == pytest.approx(15 / 220)
    m.norm.requires_grad_(False)
    assert W.weight_stats(m).aggregate()["numel"] == 200
    assert W.weight_stats(m, trainable_only=False).aggregate()["numel"] == 220
    summary = st.summary()
    assert set(summary["per_block"]) == {"block.0", "block.1", "other"}


def test_histogram_counts_and_plot(tmp_path):
    edges = torch.linspace(-2, 2, 5)  # bins [-2,-1), [-1,0), [0,1), [1,2]
    counts = W.histogram({"a": torch.tensor([-1.5, -0.5, 0.5, 1.5, 9.0])}, edges)
    assert counts.tolist() == [1, 1, 1, 2]  # 9 clamped into the last bin
    out = W.plot_weight_histograms({"x": {"a": torch.randn(100)}, "y": {"b": torch.randn(50) * 3}}, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000
    assert sum(out["x"]) == 100 and sum(out["y"]) == 50


def test_vit_from_transformers_config():
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    image_size=16, patch_size=8)
    st = W.weight_stats(ViTModel(cfg))
    assert st.blocks()[:2] == ["block.0", "block.1"]
    assert math.isfinite(st.aggregate()["kurtosis"])


def test_no_params_is_an_error():
    with pytest.raises(Lm2vError):
        W.weight_stats(nn.ReLU())
