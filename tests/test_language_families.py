"""The phase paper's language families beyond BERT, RoBERTa and GPT-2: DistilBERT, ALBERT and XLNet (DistilRoBERTa
and DialoGPT are the roberta and gpt2 rows), as patch-fed backbones and as the language side of ``lm2v phase``.

Known answers: the backbone's pooled output is the Hugging Face model's own ``last_hidden_state`` fed the same
patch vectors (built here by ``F.conv2d``, the reference run in eager attention); a caption's embedding in a
padded batch is the model's own forward on that caption alone; the phase kernel of XLNet (the family with its
own mask format) is the per-sample autograd kernel of tests/reference.py.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import test_models
from conftest import TINY_RUN
from reference import per_sample_ntk
from transformers import AutoConfig, AutoModel

from lm2vision.cli.main import main
from lm2vision.errors import Lm2vError
from lm2vision.models import (ARCH, ModelConfig, TrainableSpec, VisionBackbone, apply_trainable, create_backbone,
                              load_lm_config)
from lm2vision.models.arch import TINY_CONFIGS, arch_for
from lm2vision.phase.screen import ScreenConfig, load_pairs
from lm2vision.phase.sides import ByteTokenizer, load_language, tokenize
from lm2vision.train.rundir import load_run_model

NEW = ["tiny-distilbert", "tiny-albert", "tiny-xlnet"]
TWO_BLOCKS = ["tiny-distilbert", "tiny-xlnet"]  # ALBERT shares one block's weights over its 2 layers


def tiny(name: str, **kw) -> VisionBackbone:
    return create_backbone(ModelConfig(name=name, pretrained=False, dropout=0.0, **kw))


def reference_lm(name: str) -> torch.nn.Module:
    """The same Hugging Face model as the backbone's (same config, same seed 0), untouched by us, eager attention."""
    config = load_lm_config(name)
    kw = dict(ARCH[config.model_type].model_kwargs)
    if config.model_type != "xlnet":  # XLNet has one attention code and refuses the argument
        kw["attn_implementation"] = "eager"
    torch.manual_seed(0)
    return AutoModel.from_config(config, **kw).eval()


# -- (a) patch-fed backbones ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,pooling", [("tiny-distilbert", "auto"), ("tiny-albert", "auto"), ("tiny-xlnet", "auto"),
                                          ("tiny-xlnet", "last")])
def test_pooled_output_is_the_hf_models_own_forward(name, pooling):
    m = tiny(name, pooling=pooling).eval()
    ref = reference_lm(name)
    ours = m.lm.state_dict()
    shared = {k: v for k, v in ref.state_dict().items() if k in ours and v.shape == ours[k].shape}
    assert all(torch.equal(v, ours[k]) for k, v in shared.items()) and len(shared) > 10  # the same weights
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    w = m.patch_embed.proj
    patches = F.conv2d(x, w.weight, w.bias, stride=4).flatten(2).transpose(1, 2)  # (2, 64, C_in)
    assert patches.shape[-1] == ref.get_input_embeddings().embedding_dim  # ALBERT: 16, its embedding_size
    with torch.no_grad():
        h = ref(inputs_embeds=patches).last_hidden_state  # the model's own positions (none for XLNet)
        got = m.forward_head(m.forward_features(x), pre_logits=True)
    expected = h[:, -1] if pooling == "last" else h.mean(1)  # bidirectional families: mean by default
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", NEW)
def test_defaults_and_fixed_parameters(name):
    m = tiny(name)
    assert (m.causal, m.pooling) == (False, "mean")
    assert m.positions == ("none" if name == "tiny-xlnet" else "model")  # XLNet: relative positions, no table
    assert m.num_blocks == (1 if name == "tiny-albert" else 2)
    assert (m.width, m.embed_width) == ((32, 16) if name == "tiny-albert" else (32, 32))
    fixed = {"tiny-distilbert": {"lm.embeddings.word_embeddings.weight"},
             "tiny-albert": {"lm.embeddings.word_embeddings.weight"},
             "tiny-xlnet": {"lm.word_embedding.weight", "lm.mask_emb", "lm.layer.0.rel_attn.seg_embed",
                            "lm.layer.1.rel_attn.seg_embed", "lm.layer.0.rel_attn.r_s_bias",
                            "lm.layer.1.rel_attn.r_s_bias"}}[name]
    assert m.fixed_params == fixed
    assert not any(p.requires_grad for n, p in m.named_parameters() if n in fixed)


def groups_names(groups: dict, keys: list[str], within: set | None = None) -> list[str]:
    """The names in ``groups[k]`` for k in ``keys``, repeats kept (so a name in two groups shows twice)."""
    return [n for k in keys for n in groups[k] if within is None or n in within]


@pytest.mark.parametrize("name", NEW)
def test_layer_groups_partition_the_parameters(name):
    """Every parameter but the fixed ones is in exactly one of the blocks, patch, pos, embed, final_norm, head;
    within each block, attn, mlp and norm partition it."""
    m = tiny(name)
    groups = m.layer_groups()
    primary = [f"block.{i}" for i in range(m.num_blocks)] + ["patch", "pos", "embed", "final_norm", "head"]
    assert sorted(groups_names(groups, primary)) == sorted(n for n, _ in m.named_parameters() if n not in m.fixed_params)
    for i in range(m.num_blocks):
        parts = groups_names(groups, ["attn", "mlp", "norm"], within=set(groups[f"block.{i}"]))
        assert sorted(parts) == sorted(groups[f"block.{i}"])
    if name == "tiny-albert":  # token types and the 16 -> 32 projection are input-side tables/modules
        assert sorted(groups["embed"]) == ["lm.embeddings.token_type_embeddings.weight",
                                           "lm.encoder.embedding_hidden_mapping_in.bias",
                                           "lm.encoder.embedding_hidden_mapping_in.weight"]


def _trained(m: VisionBackbone) -> set[str]:
    m.zero_grad()
    F.cross_entropy(m(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2])).backward()
    return {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


@pytest.mark.parametrize("name", NEW)
def test_first_block_selector_trains_exactly_block_0(name):
    m = tiny(name)
    chosen = apply_trainable(m, TrainableSpec(blocks="first:1", groups=[]))
    block0 = {n for n, _ in m.named_parameters() if n.startswith(f"lm.{m.spec.blocks}.0.") and n not in m.fixed_params}
    assert len(block0) == {"tiny-distilbert": 16, "tiny-albert": 16, "tiny-xlnet": 15}[name]  # XLNet: 17 - 2 fixed
    assert chosen == block0 and _trained(m) == block0
    if name == "tiny-albert":  # the one shared block is every layer's weights: first:1 is all of them
        assert block0 == {n for n, _ in m.named_parameters() if ".albert_layer_groups." in n}


def test_albert_selectors_index_its_one_shared_block():
    m = tiny("tiny-albert")
    assert m.lm.config.num_hidden_layers == 2 and m.num_blocks == 1
    with pytest.raises(Lm2vError, match="first:2 asks for 2 blocks but the model has 1") as e:
        apply_trainable(m, TrainableSpec(blocks="first:2"))
    assert "\n" not in str(e.value)
    assert apply_trainable(m, TrainableSpec(blocks="all", groups=[])) == set(m.layer_groups()["block.0"])
    assert apply_trainable(m, TrainableSpec(blocks="last:1", groups=[])) == set(m.layer_groups()["block.0"])


@pytest.mark.parametrize("name", TWO_BLOCKS)
@pytest.mark.parametrize("spec,wanted", test_models.SELECTORS)
def test_existing_selector_table_on_the_new_families(name, spec, wanted):
    test_models.test_exactly_the_selected_parameters_receive_gradients(name, spec, wanted)


@pytest.mark.parametrize("spec,wanted", [row for row in test_models.SELECTORS if "block.1" not in row[1]])
def test_existing_selector_table_on_albert(spec, wanted):
    test_models.test_exactly_the_selected_parameters_receive_gradients("tiny-albert", spec, wanted)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("size,patch", [(32, 4), (48, 16)])
def test_existing_shape_test_on_the_new_families(name, size, patch):
    test_models.test_shapes_and_finite(name, size, patch)


def test_gradient_checkpointing_same_gradients_or_one_line_refusal():
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 3])
    grads = []
    for ckpt in (False, True):
        m = tiny("tiny-distilbert", gradient_checkpointing=ckpt).train()
        F.cross_entropy(m(x), y).backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5)
    for name, cls in (("tiny-albert", "AlbertModel"), ("tiny-xlnet", "XLNetModel")):
        with pytest.raises(Lm2vError, match=f"{cls} .* does not support gradient checkpointing") as e:
            tiny(name, gradient_checkpointing=True)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("make,match", [
    (lambda: tiny("tiny-xlnet", attention="causal"), "xlnet takes no custom attention mask"),
    (lambda: tiny("tiny-xlnet", positions="model"), "xlnet has no position table"),
    (lambda: tiny("tiny-xlnet").block_fn(), "xlnet blocks cannot run outside the model"),
    (lambda: VisionBackbone(AutoModel.from_config(AutoConfig.for_model(**{**TINY_CONFIGS["tiny-albert"],
                                                                          "num_hidden_groups": 2})),
                            ARCH["albert"], ModelConfig(name="x", pretrained=False)),
     "albert with num_hidden_groups=2 is not supported"),
    (lambda: arch_for("t5"), "unsupported model family 't5'"),
])
def test_what_a_family_cannot_do_is_a_one_line_error(make, match):
    with pytest.raises(Lm2vError, match=match) as e:
        make()
    assert "\n" not in str(e.value)


def test_albert_shared_block_run_standalone_rebuilds_the_models_forward():
    """block_fn on ALBERT's one block, applied num_hidden_layers times after the embeddings and the 16 -> 32
    projection, gives the backbone's tokens: the shared block really is every layer."""
    m = tiny("tiny-albert").eval()
    x = torch.randn(2, 3, 32, 32)
    run = m.block_fn()
    with torch.no_grad():
        h = m.lm.encoder.embedding_hidden_mapping_in(m.lm.embeddings(inputs_embeds=m.patch_embed(x)))
        for _ in range(m.lm.config.num_hidden_layers):
            h = run(m.blocks[0], h)
        torch.testing.assert_close(h, m.forward_features(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("head_class,model_type,heads", [
    ("DistilBertForMaskedLM", "distilbert", "vocab_projector"),
    ("AlbertForMaskedLM", "albert", "predictions"),
    ("XLNetLMHeadModel", "xlnet", "lm_loss"),
    ("RobertaForMaskedLM", "roberta", "lm_head"),  # DistilRoBERTa's checkpoint class
    ("GPT2LMHeadModel", "gpt2", "lm_head"),  # DialoGPT's
])
def test_hub_style_checkpoints_load_with_every_key_accounted_for(tmp_path, head_class, model_type, heads):
    """The hub checkpoints are saved from the pre-training head classes: their heads are dropped on purpose
    (``unused_weights``), every other weight loads, and the blocks carry the saved values."""
    import transformers

    name = next(k for k, v in TINY_CONFIGS.items() if v["model_type"] == model_type)
    torch.manual_seed(5)
    saved = getattr(transformers, head_class)(load_lm_config(name))
    saved.save_pretrained(tmp_path)
    assert any(k.startswith(heads) for k in saved.state_dict())
    m = create_backbone(ModelConfig(name=str(tmp_path), pretrained=True))
    prefix = saved.base_model_prefix
    base = {k[len(prefix) + 1:]: v for k, v in saved.state_dict().items() if k.startswith(prefix + ".")}
    block = f"{m.spec.blocks}.0."
    keys = [k for k in base if k.startswith(block)]
    assert keys and all(torch.equal(base[k], m.lm.state_dict()[k]) for k in keys)


# -- (b) the language side of ``lm2v phase`` -------------------------------------------------------------------
@pytest.mark.parametrize("name", NEW + ["tiny-gpt2"])  # gpt2: DialoGPT; its causal 4D mask
def test_caption_embedding_is_the_models_own_forward_mean_pooled(name):
    side = load_language(name, out_dim=None)
    captions = ["a blurry photo of a truck.", "a cat", "an airplane in the sky"]
    ids, mask = tokenize(side.tokenizer, captions)  # right-padded with id 0
    assert mask.sum(1).tolist() == [len(c) for c in captions] and mask.shape[1] == 26
    with torch.no_grad():
        got = side.now.embed(ids, mask)  # (3, C)
        for i, n in enumerate(mask.sum(1).tolist()):
            own = side.now.model(input_ids=ids[i:i + 1, :n]).last_hidden_state.mean(1)  # alone, unpadded
            torch.testing.assert_close(got[i:i + 1], own, atol=2e-5, rtol=1e-4)


def test_phase_screens_the_new_families_and_xlnets_kernel_is_the_reference(tmp_path, capsys, one_thread):
    out = tmp_path / "phase"
    langs = ["tiny-distilbert", "tiny-albert", "tiny-xlnet", "tiny-gpt2"]
    assert main(["phase", "--vision", "tiny-bert", "--language", *langs, "--out", str(out), "--samples", "20",
                 "--ntk-samples", "5", "--agop-samples", "3", "--no-progress", "ntk.method=jacobian"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["language"] for r in results["rows"]] == langs
    assert [r["S_l"] for r in results["rows"]] == pytest.approx([1.0] * 4, abs=1e-9)  # tiny: now and init are one init
    # XLNet's kernel (2D padding mask, its own attention) over the first 5 captions, recomputed per caption
    # without padding, one autograd pass per caption and output in float64 (tests/reference.py)
    pairs = load_pairs(ScreenConfig(samples=20))
    emb = load_language("tiny-xlnet", out_dim=8, seed=0).now.double()
    table = set(map(id, emb.model.get_input_embeddings().parameters()))
    params = [p for p in emb.parameters() if id(p) not in table]
    caps = [tokenize(ByteTokenizer(16), [c])[0] for c in pairs.captions[:5]]  # (1, T_i) each
    k_l = per_sample_ntk(emb, [(t, torch.ones_like(t)) for t in caps], params)
    assert results["models"]["language:tiny-xlnet"]["ntk_trace"] == pytest.approx(float(torch.trace(k_l)), rel=1e-4)


# -- one short bridge run through the command line -------------------------------------------------------------
def test_bridge_one_epoch_on_xlnet_trains_exactly_block_0(tmp_path, capsys):
    run = tmp_path / "b"
    argv = ["bridge", "--out", str(run), *TINY_RUN, "model.name=tiny-xlnet", "optim.epochs=1",
            "data.max_train_per_class=5",
            "trainable.blocks=first:1", "trainable.groups=[patch,head]"]
    assert main(argv) == 0
    assert "trainable params" in capsys.readouterr().out
    final, _ = load_run_model(run)
    init, _ = load_run_model(run, weights="init.safetensors")
    start = dict(init.named_parameters())
    moved = {n for n, p in final.named_parameters() if not torch.equal(p, start[n])}
    expected = {n for n, _ in final.named_parameters()
                if n.startswith(("lm.layer.0.", "patch_embed.", "head.")) and n not in final.fixed_params}
    assert moved == expected
