"""Named groups and freezing: invariants for every family of the architecture table, and the regex
escape hatch (peft's ``target_modules``) as a table of cases."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from lm2vision.errors import Lm2vError
from lm2vision.models import TINY_CONFIGS, ModelConfig, TrainableSpec, apply_trainable, create_backbone
from lm2vision.models.freeze import trainable_summary

ALL_TINY = sorted(TINY_CONFIGS)
FIXED = "fixed"  # the unused word table and switched-off position tables: in no group, never trained

# Where each parameter belongs, written from the Hugging Face module names (not from layer_groups).
# (regex, groups); "block" stands for block.<i>, i being the regex's first group. First match wins.
COMMON = [
    (r"^patch_embed\.proj\.(weight|bias)$", {"patch"}),
    (r"^pos_embed$", {"pos"}),
    (r"^head\.(weight|bias)$", {"head"}),
]
GPT2 = [
    (r"^lm\.wte\.weight$", FIXED),
    (r"^lm\.wpe\.weight$", {"pos"}),
    (r"^lm\.h\.(\d+)\.ln_[12]\.(weight|bias)$", {"block", "norm"}),
    (r"^lm\.h\.(\d+)\.attn\.c_(attn|proj)\.(weight|bias)$", {"block", "attn"}),
    (r"^lm\.h\.(\d+)\.mlp\.c_(fc|proj)\.(weight|bias)$", {"block", "mlp"}),
    (r"^lm\.ln_f\.(weight|bias)$", {"norm", "final_norm"}),
]
BERT = [  # RoBERTa has the same module names
    (r"^lm\.embeddings\.word_embeddings\.weight$", FIXED),
    (r"^lm\.embeddings\.position_embeddings\.weight$", {"pos"}),
    (r"^lm\.embeddings\.token_type_embeddings\.weight$", {"embed"}),
    (r"^lm\.embeddings\.LayerNorm\.(weight|bias)$", {"norm", "final_norm"}),
    (r"^lm\.encoder\.layer\.(\d+)\.(attention\.output|output)\.LayerNorm\.(weight|bias)$", {"block", "norm"}),
    (r"^lm\.encoder\.layer\.(\d+)\.attention\.(self\.(query|key|value)|output\.dense)\.(weight|bias)$",
     {"block", "attn"}),
    (r"^lm\.encoder\.layer\.(\d+)\.(intermediate|output)\.dense\.(weight|bias)$", {"block", "mlp"}),
]
LLAMA = [  # Mistral, Qwen2 (q/k/v biases), Qwen3 (q_norm, k_norm)
    (r"^lm\.embed_tokens\.weight$", FIXED),
    (r"^lm\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight$", {"block", "norm"}),
    (r"^lm\.layers\.(\d+)\.self_attn\.[qk]_norm\.weight$", {"block", "norm"}),
    (r"^lm\.layers\.(\d+)\.self_attn\.[qkvo]_proj\.(weight|bias)$", {"block", "attn"}),
    (r"^lm\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight$", {"block", "mlp"}),
    (r"^lm\.norm\.weight$", {"norm", "final_norm"}),
]
PATTERNS = {"gpt2": GPT2, "bert": BERT, "roberta": BERT, "llama": LLAMA, "mistral": LLAMA, "qwen2": LLAMA,
            "qwen3": LLAMA}
FIXED_COUNT = {}  # model_type -> fixed parameters with positions "auto", when not 1 (the word table)

# -- the phase paper's other language families ----------------------------------------------------------------
DISTILBERT = [
    (r"^lm\.embeddings\.word_embeddings\.weight$", FIXED),
    (r"^lm\.embeddings\.position_embeddings\.weight$", {"pos"}),
    (r"^lm\.embeddings\.LayerNorm\.(weight|bias)$", {"norm", "final_norm"}),
    (r"^lm\.transformer\.layer\.(\d+)\.(sa|output)_layer_norm\.(weight|bias)$", {"block", "norm"}),
    (r"^lm\.transformer\.layer\.(\d+)\.attention\.(q|k|v|out)_lin\.(weight|bias)$", {"block", "attn"}),
    (r"^lm\.transformer\.layer\.(\d+)\.ffn\.lin[12]\.(weight|bias)$", {"block", "mlp"}),
]
ALBERT = [  # one shared layer: albert_layer_groups.0.albert_layers.0 is block.0
    (r"^lm\.embeddings\.word_embeddings\.weight$", FIXED),
    (r"^lm\.embeddings\.position_embeddings\.weight$", {"pos"}),
    (r"^lm\.embeddings\.token_type_embeddings\.weight$", {"embed"}),
    (r"^lm\.embeddings\.LayerNorm\.(weight|bias)$", {"norm", "final_norm"}),
    (r"^lm\.encoder\.embedding_hidden_mapping_in\.(weight|bias)$", {"embed"}),
    (r"^lm\.encoder\.albert_layer_groups\.0\.albert_layers\.(\d+)\.(full_layer_layer_norm|attention\.LayerNorm)\."
     r"(weight|bias)$", {"block", "norm"}),
    (r"^lm\.encoder\.albert_layer_groups\.0\.albert_layers\.(\d+)\.attention\.(query|key|value|dense)\.(weight|bias)$",
     {"block", "attn"}),
    (r"^lm\.encoder\.albert_layer_groups\.0\.albert_layers\.(\d+)\.ffn(_output)?\.(weight|bias)$", {"block", "mlp"}),
]
XLNET = [  # no position table; the segment terms and the mask embedding never see a patch token
    (r"^lm\.(word_embedding\.weight|mask_emb)$", FIXED),
    (r"^lm\.layer\.\d+\.rel_attn\.(seg_embed|r_s_bias)$", FIXED),
    (r"^lm\.layer\.(\d+)\.(rel_attn|ff)\.layer_norm\.(weight|bias)$", {"block", "norm"}),
    (r"^lm\.layer\.(\d+)\.rel_attn\.([qkvor]|r_r_bias|r_w_bias)$", {"block", "attn"}),
    (r"^lm\.layer\.(\d+)\.ff\.layer_[12]\.(weight|bias)$", {"block", "mlp"}),
]
PATTERNS.update({"distilbert": DISTILBERT, "albert": ALBERT, "xlnet": XLNET})
FIXED_COUNT.update({"xlnet": 6})  # word table, mask_emb, seg_embed and r_s_bias of both blocks


def tiny(name: str, **kw):
    return create_backbone(ModelConfig(name=name, pretrained=False, dropout=0.0, image_size=32, patch_size=8, **kw))


def expected_groups(name: str, model_type: str, positions: str) -> set[str] | str:
    for pattern, groups in COMMON + PATTERNS[model_type]:
        m = re.match(pattern, name)
        if m:
            if positions == "learned" and groups == {"pos"} and name != "pos_embed":
                return FIXED  # the model's own table is zeroed and frozen when we bring ours
            return groups if groups == FIXED else {f"block.{m.group(1)}" if g == "block" else g for g in groups}
    raise AssertionError(f"no pattern for parameter {name}: a new kind of parameter needs a group")


def groups_by_name(model) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for group, names in model.layer_groups().items():
        for n in names:
            out.setdefault(n, set()).add(group)
    return out


@pytest.mark.parametrize("name", ALL_TINY)
@pytest.mark.parametrize("positions", ["auto", "learned"])
def test_every_parameter_is_in_exactly_the_groups_its_name_says(name, positions):
    m = tiny(name, positions=positions)
    model_type = TINY_CONFIGS[name]["model_type"]
    got = groups_by_name(m)
    for n, _ in m.named_parameters():
        want = expected_groups(n, model_type, positions)
        if want == FIXED:
            assert n in m.fixed_params and n not in got, n
        else:
            assert got.get(n) == want and n not in m.fixed_params, n


@pytest.mark.parametrize("name", ALL_TINY)
def test_attn_mlp_norm_partition_each_block(name):
    m = tiny(name)
    groups = {g: set(names) for g, names in m.layer_groups().items()}
    for i in range(m.num_blocks):  # 2, or 1 for ALBERT's shared block
        block = groups[f"block.{i}"]
        parts = [block & groups[p] for p in ("attn", "mlp", "norm")]
        assert all(parts), f"block {i} lacks a part"
        assert sum(len(p) for p in parts) == len(block) and set.union(*parts) == block


@pytest.mark.parametrize("name", ALL_TINY)
def test_default_spec_trains_everything_but_the_fixed_tables(name):
    m = tiny(name)
    model_type = TINY_CONFIGS[name]["model_type"]
    fixed = {n for n, _ in m.named_parameters() if expected_groups(n, model_type, "auto") == FIXED}
    assert len(fixed) == FIXED_COUNT.get(model_type, 1)  # the word table (positions are reused or rotary)
    apply_trainable(m, TrainableSpec())
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {n for n, _ in m.named_parameters()} - fixed


@pytest.mark.parametrize("name", ALL_TINY)
def test_every_trainable_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    m = tiny(name, num_classes=5)
    apply_trainable(m, TrainableSpec())
    logits = m(torch.randn(3, 3, 32, 32))
    assert logits.shape == (3, 5) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 1, 4])).backward()
    dead = [n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert dead == []


def _blocks(fmt: str, leaves: list[str]) -> set[str]:
    return {fmt.format(i=i, leaf=leaf) for i in (0, 1) for leaf in leaves}


# (family, spec, the names that train), written out by hand, as peft's tests of target_modules.
REGEX_CASES = [
    ("tiny-gpt2", TrainableSpec(blocks="none", groups=[], include=r"\.attn\.c_attn\."),
     {"lm.h.0.attn.c_attn.weight", "lm.h.0.attn.c_attn.bias", "lm.h.1.attn.c_attn.weight", "lm.h.1.attn.c_attn.bias"}),
    ("tiny-gpt2", TrainableSpec(blocks="1", groups=["head"], exclude=r"\.bias$"),
     {"lm.h.1.ln_1.weight", "lm.h.1.attn.c_attn.weight", "lm.h.1.attn.c_proj.weight", "lm.h.1.ln_2.weight",
      "lm.h.1.mlp.c_fc.weight", "lm.h.1.mlp.c_proj.weight", "head.weight"}),
    ("tiny-gpt2", TrainableSpec(blocks="none", groups=["pos"], include=r"ln_f"),
     {"lm.wpe.weight", "lm.ln_f.weight", "lm.ln_f.bias"}),
    ("tiny-gpt2", TrainableSpec(blocks="none", groups=["head"], include=r"^lm\.wte\."),  # fixed: never
     {"head.weight", "head.bias"}),
    ("tiny-gpt2", TrainableSpec(blocks="all", exclude=r"."), set()),
    ("tiny-bert", TrainableSpec(blocks="none", groups=[], include=r"LayerNorm\.weight"),
     {"lm.embeddings.LayerNorm.weight"}
     | _blocks("lm.encoder.layer.{i}.{leaf}.LayerNorm.weight", ["attention.output", "output"])),
    ("tiny-bert", TrainableSpec(blocks="0", parts=["attn"], groups=[], exclude=r"\.(key|value)\."),
     {"lm.encoder.layer.0.attention.self.query.weight", "lm.encoder.layer.0.attention.self.query.bias",
      "lm.encoder.layer.0.attention.output.dense.weight", "lm.encoder.layer.0.attention.output.dense.bias"}),
    ("tiny-bert", TrainableSpec(blocks="all", parts=["mlp"], groups=["embed"], include=r"^head\.",
                                exclude=r"^lm\.encoder\.layer\.1\."),
     {"lm.encoder.layer.0.intermediate.dense.weight", "lm.encoder.layer.0.intermediate.dense.bias",
      "lm.encoder.layer.0.output.dense.weight", "lm.encoder.layer.0.output.dense.bias",
      "lm.embeddings.token_type_embeddings.weight", "head.weight", "head.bias"}),
    ("tiny-bert", TrainableSpec(blocks="none", parts=["norm"], groups=["patch"], include=r"position"),
     {"patch_embed.proj.weight", "patch_embed.proj.bias", "lm.embeddings.position_embeddings.weight"}),
]


@pytest.mark.parametrize("name,spec,want", REGEX_CASES)
def test_include_and_exclude_regexes_select_by_name(name, spec, want):
    m = tiny(name)
    assert apply_trainable(m, spec) == want
    assert {n for n, p in m.named_parameters() if p.requires_grad} == want


@pytest.mark.parametrize("key", ["include", "exclude"])
def test_a_bad_regex_is_a_one_line_error(key):
    with pytest.raises(Lm2vError, match=f"trainable.{key} '\\(attn' is not a valid regex") as e:
        apply_trainable(tiny("tiny-gpt2"), TrainableSpec(**{key: "(attn"}))
    assert "\n" not in str(e.value)


def test_summary_shows_the_regexes_and_the_embed_group():
    m = tiny("tiny-bert")
    apply_trainable(m, TrainableSpec(blocks="none", groups=["embed"], include=r"^head\.", exclude=r"bias"))
    lines = trainable_summary(m).splitlines()
    assert lines[0].startswith("trainable params: 384 /")  # token types 2 * 32 + head weight 10 * 32
    assert lines[1:3] == ["  include    /^head\\./", "  exclude    /bias/"]
    assert "  embed                64 /           64  train" in lines
    assert "  head                320 /          330  partial" in lines
