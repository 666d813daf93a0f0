"""Backbone adapter: every family of the architecture table, built from tiny in-memory configs."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import FAMILIES
from lm2vision.errors import Lm2vError
from lm2vision.models import (ARCH, TINY_CONFIGS, ModelConfig, TrainableSpec, apply_trainable, create_backbone,
                              parse_blocks, select_parameters, trainable_summary)


def tiny(name: str, **kw):
    return create_backbone(ModelConfig(name=name, pretrained=False, dropout=0.0, **kw))


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("size,patch", [(32, 4), (32, 8), (48, 16)])
def test_shapes_and_finite(name, size, patch):
    m = tiny(name, image_size=size, patch_size=patch, num_classes=7)
    x = torch.randn(3, 3, size, size)
    tokens = m.forward_features(x)
    T = (size // patch) ** 2
    assert tokens.shape == (3, T, m.width) and m.num_tokens == T
    assert m.forward_head(tokens, pre_logits=True).shape == (3, m.width)
    logits = m(x)
    assert logits.shape == (3, 7) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_defaults_follow_the_family(name):
    m = tiny(name)
    causal = name != "tiny-bert"
    assert m.causal is causal
    assert m.pooling == ("last" if causal else "mean")  # the paper's last token for causal models
    assert m.positions == ("model" if name in ("tiny-gpt2", "tiny-bert") else "none")


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-bert", "tiny-llama"])
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_attention_mode_controls_what_token0_sees(name, attention):
    """Causal: the first token ignores later patches; bidirectional: it sees them. Same in eager."""
    x = torch.randn(1, 3, 32, 32)
    x2 = x.clone()
    x2[..., 16:, :] += 1.0  # change only the lower half (later tokens)
    outs = {}
    for impl in ("sdpa", "eager"):
        m = tiny(name, attention=attention, attn_implementation=impl).eval()
        f1, f2 = m.forward_features(x), m.forward_features(x2)
        moved = (f1[0, 0] - f2[0, 0]).abs().max().item()
        assert (moved > 1e-4) == (attention == "bidirectional")
        outs[impl] = f1
    torch.testing.assert_close(outs["sdpa"], outs["eager"], atol=1e-5, rtol=1e-4)


def test_positions_modes():
    learned = tiny("tiny-gpt2", positions="learned")
    assert learned.pos_embed is not None and learned.pos_embed.shape == (1, 64, 32)
    assert float(learned.lm.wpe.weight.abs().sum()) == 0.0  # the model's own table is switched off
    assert "lm.wpe.weight" not in sum(learned.layer_groups().values(), [])
    model_pos = tiny("tiny-gpt2", positions="model")
    assert model_pos.pos_embed is None and float(model_pos.lm.wpe.weight.abs().sum()) > 0
    with pytest.raises(Lm2vError, match="rotary"):
        tiny("tiny-llama", positions="model")


def test_pooling_modes_pick_the_right_token():
    m = tiny("tiny-bert", pooling="first")
    t = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    assert torch.equal(m.pool(t), t[:, 0])
    m.pooling = "last"
    assert torch.equal(m.pool(t), t[:, -1])
    m.pooling = "mean"
    assert torch.equal(m.pool(t), t.mean(1))


# selector -> expected trainable groups, for a 2-block model. Table-driven as peft's tests.
SELECTORS = [
    (TrainableSpec(blocks="all"), {"block.0", "block.1", "patch", "pos", "embed", "final_norm", "head"}),
    (TrainableSpec(blocks="first:1", groups=["head"]), {"block.0", "head"}),
    (TrainableSpec(blocks="last:1", groups=["patch"]), {"block.1", "patch"}),
    (TrainableSpec(blocks="1", groups=[]), {"block.1"}),
    (TrainableSpec(blocks="none", groups=["patch", "pos", "norm", "head"]), {"patch", "pos", "norm", "head"}),
    (TrainableSpec(blocks="all", parts=["attn"], groups=[]), {"attn"}),
    (TrainableSpec(blocks="first:1", parts=["mlp"], groups=["head"]), {"mlp@0", "head"}),
]


def _expected_names(model, wanted: set[str]) -> set[str]:
    groups = model.layer_groups()
    names: set[str] = set()
    for w in wanted:
        if "@" in w:  # part within one block
            part, block = w.split("@")
            names |= set(groups[part]) & set(groups[f"block.{block}"])
        else:
            names |= set(groups[w])
    return names


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("spec,wanted", SELECTORS)
def test_exactly_the_selected_parameters_receive_gradients(name, spec, wanted):
    m = tiny(name, positions="learned" if name in ("tiny-llama", "tiny-qwen2", "tiny-qwen3") else "auto")
    chosen = apply_trainable(m, spec)
    expected = _expected_names(m, wanted)
    assert chosen == expected and expected
    m.zero_grad()
    F.cross_entropy(m(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2])).backward()
    got = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got == expected


def test_block_selector_parsing_and_errors():
    assert parse_blocks("all", 6) == [0, 1, 2, 3, 4, 5]
    assert parse_blocks("first:2", 6) == [0, 1]
    assert parse_blocks("last:2", 6) == [4, 5]
    assert parse_blocks("5,0,1", 6) == [0, 1, 5]
    assert parse_blocks("none", 6) == []
    assert parse_blocks("from:5", 6) == [5]  # the authors' older partial training: freeze the first 5
    assert parse_blocks("from:0", 6) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(Lm2vError, match="asks for 7 blocks but the model has 6"):
        parse_blocks("first:7", 6)
    with pytest.raises(Lm2vError, match="after the first 6 blocks but the model has 6"):
        parse_blocks("from:6", 6)  # nothing would train
    with pytest.raises(Lm2vError, match="out of range"):
        parse_blocks("0,6", 6)
    with pytest.raises(Lm2vError, match="bad block selector"):
        parse_blocks("firsts", 6)
    with pytest.raises(Lm2vError, match="unknown group"):
        select_parameters({"block.0": []}, TrainableSpec(blocks="none", groups=["attention"]), 1)


def test_trainable_summary_counts():
    m = tiny("tiny-gpt2")
    apply_trainable(m, TrainableSpec(blocks="none", groups=["head"]))
    first = trainable_summary(m).splitlines()[0]
    assert first.startswith("trainable params: 330 /")  # head: 32 * 10 + 10


@pytest.mark.parametrize("kw,match", [
    (dict(image_size=30, patch_size=4), "not divisible"),
    (dict(pooling="max"), "pooling"),
    (dict(attention="sparse"), "attention"),
    (dict(name="/no/such/model/dir"), "cannot load model"),
    (dict(name="tiny-gpt2", image_size=256, patch_size=4), "exceed the model's 256 positions"),
])
def test_bad_model_configs_are_one_line_errors(kw, match):
    cfg = dict(name="tiny-gpt2", pretrained=False) | kw
    with pytest.raises(Lm2vError, match=match) as e:
        create_backbone(ModelConfig(**cfg))
    assert "\n" not in str(e.value)


def test_tiny_configs_have_no_pretrained_weights():
    with pytest.raises(Lm2vError, match="pretrained=false"):
        create_backbone(ModelConfig(name="tiny-bert", pretrained=True))


def test_pretrained_from_local_directory_roundtrip(tmp_path):
    """A saved Hugging Face model loads by path; scratch with the same path differs from it."""
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(3)
    GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128, vocab_size=16)).save_pretrained(tmp_path)
    pre = create_backbone(ModelConfig(name=str(tmp_path), pretrained=True))
    scratch = create_backbone(ModelConfig(name=str(tmp_path), pretrained=False))
    ref = GPT2Model.from_pretrained(tmp_path)
    torch.testing.assert_close(pre.lm.h[0].attn.c_attn.weight, ref.h[0].attn.c_attn.weight)
    assert not torch.allclose(scratch.lm.h[0].attn.c_attn.weight, ref.h[0].attn.c_attn.weight)


def test_half_precision_checkpoints_build_in_float32(tmp_path):
    """A config saved in float16 (like the fp16 MiniLM copy) still gives float32 models, both ways."""
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         vocab_size=16)).half().save_pretrained(tmp_path)
    for pretrained in (True, False):
        m = create_backbone(ModelConfig(name=str(tmp_path), pretrained=pretrained))
        assert {p.dtype for p in m.parameters()} == {torch.float32}
        assert torch.isfinite(m(torch.randn(1, 3, 32, 32))).all()


@pytest.mark.parametrize("shape, p", [((2, 3, 8, 12), 4), ((1, 3, 32, 32), 16)])
def test_patch_embed_is_the_strided_conv(shape, p):
    from lm2vision.models.backbone import PatchEmbed

    torch.manual_seed(0)
    embed = PatchEmbed(p, 5).double()
    torch.nn.init.normal_(embed.proj.bias)
    x = torch.randn(shape, dtype=torch.float64)
    ref = F.conv2d(x, embed.proj.weight, embed.proj.bias, stride=p).flatten(2).transpose(1, 2)  # (B, T, C), row-major
    out = embed(x)
    assert out.shape == (shape[0], (shape[2] // p) * (shape[3] // p), 5)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_every_family_of_the_table_has_a_tiny_config():
    assert {c["model_type"] for c in TINY_CONFIGS.values()} == set(ARCH)


@pytest.mark.parametrize("name,table,offset", [
    ("tiny-gpt2", "wpe", 0),
    ("tiny-bert", "embeddings.position_embeddings", 0),
    ("tiny-roberta", "embeddings.position_embeddings", 2),  # ids start at pad_token_id + 1 = 2
])
@pytest.mark.parametrize("size,patch", [(32, 4), (32, 8)])
def test_reused_position_table_is_cropped_without_changing_outputs(name, table, offset, size, patch):
    """The crop keeps the rows the tokens read: same output as the uncropped model with the same init."""
    from transformers import AutoModel

    from lm2vision.models import load_lm_config

    torch.manual_seed(0)
    m = tiny(name, image_size=size, patch_size=patch).eval()
    T = (size // patch) ** 2
    torch.manual_seed(0)  # create_backbone's scratch init (init_seed 0), redone by hand without the crop
    kw = {} if name == "tiny-gpt2" else {"add_pooling_layer": False}
    ref = AutoModel.from_config(load_lm_config(name), dtype=torch.float32, attn_implementation="sdpa", **kw).eval()
    full = ref.get_submodule(table).weight
    assert full.shape[0] == 256 + offset
    cropped = m.lm.get_submodule(table).weight
    assert cropped.shape == (T + offset, 32) and cropped.requires_grad
    assert torch.equal(cropped, full[:T + offset])
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out = m.forward_features(x)
        want = ref(inputs_embeds=m.patch_embed(x)).last_hidden_state
    torch.testing.assert_close(out, want, atol=1e-6, rtol=0)
    assert f"lm.{table}.weight" in m.layer_groups()["pos"]


def test_roberta_runs_at_its_full_256_positions_and_not_beyond():
    m = tiny("tiny-roberta", image_size=64, patch_size=4)  # 256 tokens read rows 2..257 of 258
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    with pytest.raises(Lm2vError, match="289 patch tokens exceed the model's 256 positions"):
        tiny("tiny-roberta", image_size=68, patch_size=4)


def test_no_weight_decay_on_positions_norms_and_biases():
    from lm2vision.train.config import OptimConfig
    from lm2vision.train.optim import build_optimizer

    m = tiny("tiny-gpt2", positions="model")
    blocks = [f"lm.h.{i}.{leaf}" for i in (0, 1) for leaf in
              ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "attn.c_attn.bias", "attn.c_proj.bias",
               "mlp.c_fc.bias", "mlp.c_proj.bias")]
    assert m.no_weight_decay() == {"lm.wpe.weight", "lm.ln_f.weight", "lm.ln_f.bias", "patch_embed.proj.bias",
                                   "head.bias", *blocks}
    apply_trainable(m, TrainableSpec(blocks="first:1", groups=["pos", "head"]))
    decay, no_decay = build_optimizer(m, OptimConfig(weight_decay=0.05)).param_groups
    params = dict(m.named_parameters())
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    # named_parameters order within each group: resume maps optimizer state by index
    assert decay["params"] == [params[n] for n in ("lm.h.0.attn.c_attn.weight", "lm.h.0.attn.c_proj.weight",
                                                   "lm.h.0.mlp.c_fc.weight", "lm.h.0.mlp.c_proj.weight",
                                                   "head.weight")]
    assert no_decay["params"] == [params[n] for n in ("lm.wpe.weight", "lm.h.0.ln_1.weight", "lm.h.0.ln_1.bias",
                                                      "lm.h.0.attn.c_attn.bias", "lm.h.0.attn.c_proj.bias",
                                                      "lm.h.0.ln_2.weight", "lm.h.0.ln_2.bias",
                                                      "lm.h.0.mlp.c_fc.bias", "lm.h.0.mlp.c_proj.bias", "head.bias")]


def _save_tiny_bert(path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         vocab_size=16)).save_pretrained(path)  # with its pooler
    return path / "model.safetensors"


def _rewrite(file, edit):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(file), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(file))
    edit(tensors)
    save_file(tensors, str(file), metadata=meta)


def test_pretrained_loading_accounts_for_every_key(tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    file = _save_tiny_bert(tmp_path)
    assert "pooler.dense.weight" in load_file(str(file))
    create_backbone(ModelConfig(name=str(tmp_path)))  # the pooler is dropped on purpose: no error
    _rewrite(file, lambda t: t.pop("encoder.layer.1.intermediate.dense.weight"))
    with pytest.raises(Lm2vError, match=r"lacks 1 weight\(s\): encoder\.layer\.1\.intermediate\.dense\.weight$") as e:
        create_backbone(ModelConfig(name=str(tmp_path)))
    assert "\n" not in str(e.value)


def test_unexpected_checkpoint_keys_are_an_error(tmp_path):
    torch.manual_seed(0)
    file = _save_tiny_bert(tmp_path)
    _rewrite(file, lambda t: t.update({"encoder.layer.0.adapter.weight": torch.zeros(4, 4)}))
    with pytest.raises(Lm2vError, match=r"has unexpected 1 weight\(s\): encoder\.layer\.0\.adapter\.weight$"):
        create_backbone(ModelConfig(name=str(tmp_path)))


def test_embedded_minilm_loads_cleanly_and_crops_its_positions():
    from safetensors.torch import load_file

    from lm2vision.models import embedded_minilm_path

    ref = load_file(str(embedded_minilm_path() / "model.safetensors"))
    prefix = "" if "pooler.dense.weight" in ref else "bert."
    assert f"{prefix}pooler.dense.weight" in ref  # it ships a pooler, which we drop without an error
    m = create_backbone(ModelConfig(name="minilm", pretrained=True))
    table = ref[f"{prefix}embeddings.position_embeddings.weight"]
    assert table.shape[0] == 512
    torch.testing.assert_close(m.lm.embeddings.position_embeddings.weight, table[:64].float())


def test_reset_classifier_keeps_dtype_device_and_mode():
    m = tiny("tiny-gpt2").to(torch.bfloat16).eval()
    m.reset_classifier(5)
    assert m.head.weight.dtype == torch.bfloat16 and m.head.weight.device.type == "cpu" and not m.head.training
    g = torch.Generator().manual_seed(0 + 1)  # init_seed + 1
    assert torch.equal(m.head.weight, (torch.randn(5, 32, generator=g) * 0.02).bfloat16())
    assert m.cfg.num_classes == 5 and m(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)).shape == (2, 5)
    m.train().reset_classifier(3, seed=7)
    g = torch.Generator().manual_seed(7)
    assert m.head.training and torch.equal(m.head.weight, (torch.randn(3, 32, generator=g) * 0.02).bfloat16())


def test_fresh_parts_come_from_explicit_seeds():
    m = tiny("tiny-gpt2", positions="learned", init_seed=4)
    g = torch.Generator().manual_seed(4)  # construction: patch weight, then our positions, one generator
    assert torch.equal(m.patch_embed.proj.weight, torch.randn(32, 3, 4, 4, generator=g) * 0.02)
    assert torch.equal(m.pos_embed, torch.randn(1, 64, 32, generator=g) * 0.02)
    pos = m.pos_embed.detach().clone()
    m.reset_patch_embed(5)
    five = m.patch_embed.proj.weight.detach().clone()
    assert torch.equal(five, torch.randn(32, 3, 4, 4, generator=torch.Generator().manual_seed(5)) * 0.02)
    with torch.no_grad():
        m.patch_embed.proj.bias.fill_(1.0)
    m.reset_patch_embed(5)
    assert torch.equal(m.patch_embed.proj.weight, five) and not m.patch_embed.proj.bias.any()
    m.reset_patch_embed(6)
    assert not torch.equal(m.patch_embed.proj.weight, five)
    assert torch.equal(m.pos_embed, pos)  # positions are not the patch embedding's
    m.reset_patch_embed()  # default: init_seed
    g = torch.Generator().manual_seed(4)
    assert torch.equal(m.patch_embed.proj.weight, torch.randn(32, 3, 4, 4, generator=g) * 0.02)
