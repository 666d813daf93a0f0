"""The architecture table: where each Hugging Face family keeps its parts.

Every family difference the backbone needs lives here and nowhere else (house rule 1). Paths are
attribute paths on the *base* model returned by ``transformers.AutoModel``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import Lm2vError


@dataclass(frozen=True)
class ArchSpec:
    """How one family of language models is laid out."""

    family: str
    blocks: str  # ModuleList of transformer blocks
    word_embed: str  # token embedding table, unused when we feed patch tokens
    pos_embed: str | None  # learned absolute position table, None for rotary models
    causal: bool  # attention as pretrained
    attn: tuple[str, ...]  # block sub-module prefixes counted as attention
    mlp: tuple[str, ...]  # block sub-module prefixes counted as MLP
    dropout_keys: tuple[str, ...]  # config fields set by ModelConfig.dropout
    max_positions_key: str | None  # config field bounding the number of tokens
    model_kwargs: tuple[tuple[str, object], ...] = ()  # extra AutoModel kwargs (drop unused parts)
    rotary_emb: str | None = None  # module giving (cos, sin) to each block of rotary families
    extra_embeds: tuple[str, ...] = ()  # other additive input-embedding tables (group ``embed``)
    pos_offset_key: str | None = None  # config field p: position ids start at p + 1 (RoBERTa's padding)
    unused_weights: tuple[str, ...] = ()  # regexes of checkpoint keys dropped on purpose (pooler, LM head)
    input_width_key: str | None = None  # config field: width of inputs_embeds when not hidden_size (ALBERT)
    embed_modules: tuple[str, ...] = ()  # other input-side modules, all their parameters in group ``embed``
    unused_params: tuple[str, ...] = ()  # regexes of model parameters patch tokens never reach: fixed, no group
    assumes: tuple[tuple[str, object], ...] = ()  # config values this layout relies on; others are refused
    mask_4d: bool = True  # the model takes a 4D (B, 1, T, T) attention mask; False: only (B, T) padding
    standalone_blocks: bool = True  # a block runs as block(hidden (B, T, C)) outside the model (``block_fn``)
    attention_kernels: bool = True  # takes model.attn_implementation (sdpa | eager); XLNet has one hand-written attention

    @property
    def rotary(self) -> bool:
        """No learned position table: rotary (LLaMA) or relative (XLNet) positions inside the blocks."""
        return self.pos_embed is None

    def input_width(self, config) -> int:
        """Width of the vectors fed through ``inputs_embeds`` (ALBERT factorises: 128 in, 768 wide)."""
        return getattr(config, self.input_width_key or "hidden_size")

    def check_config(self, config) -> None:
        """Refuse, in one line, a config whose layout differs from the one this row describes."""
        for key, wanted in self.assumes:
            if getattr(config, key, wanted) != wanted:
                raise Lm2vError(f"{self.family} with {key}={getattr(config, key)} is not supported "
                                f"(the architecture table assumes {key}={wanted})")

    def first_position(self, config) -> int:
        """Row of the position table that the first token reads (RoBERTa skips its padding rows)."""
        return getattr(config, self.pos_offset_key) + 1 if self.pos_offset_key else 0


_GPT2 = ArchSpec(
    family="gpt2", blocks="h", word_embed="wte", pos_embed="wpe", causal=True,
    attn=("attn.",), mlp=("mlp.",), dropout_keys=("resid_pdrop", "embd_pdrop", "attn_pdrop"),
    max_positions_key="n_positions", unused_weights=(r"^lm_head\.",),
)
_BERT = ArchSpec(
    family="bert", blocks="encoder.layer", word_embed="embeddings.word_embeddings",
    pos_embed="embeddings.position_embeddings", causal=False,
    attn=("attention.",), mlp=("intermediate.", "output."),
    dropout_keys=("hidden_dropout_prob", "attention_probs_dropout_prob"),
    max_positions_key="max_position_embeddings", model_kwargs=(("add_pooling_layer", False),),
    extra_embeds=("embeddings.token_type_embeddings",),
    unused_weights=(r"^pooler\.", r"^cls\."),  # the pooler and BERT's pre-training heads
)
# RoBERTa numbers positions from pad_token_id + 1; its masked-LM head is ``lm_head``.
_ROBERTA = replace(_BERT, family="roberta", pos_offset_key="pad_token_id", unused_weights=(r"^pooler\.", r"^lm_head\."))
_LLAMA = ArchSpec(
    family="llama", blocks="layers", word_embed="embed_tokens", pos_embed=None, causal=True,
    attn=("self_attn.",), mlp=("mlp.",), dropout_keys=("attention_dropout",), max_positions_key=None,
    rotary_emb="rotary_emb", unused_weights=(r"^lm_head\.",),
)

# Hugging Face ``config.model_type`` -> layout. LLaMA, Qwen2, Qwen3 and Mistral share one layout
# (pre-norm decoder, RMSNorm, rotary positions); BERT-likes share the post-norm encoder layout.
ARCH: dict[str, ArchSpec] = {
    "gpt2": _GPT2,
    "bert": _BERT,
    "roberta": _ROBERTA,
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
}


# -- language families of the phase paper beyond the ones above ----------------------------------------------
# DistilRoBERTa is model_type "roberta" and DialoGPT "gpt2": their rows above serve them unchanged.
_DISTILBERT = ArchSpec(
    family="distilbert", blocks="transformer.layer", word_embed="embeddings.word_embeddings",
    pos_embed="embeddings.position_embeddings", causal=False, attn=("attention.",), mlp=("ffn.",),
    dropout_keys=("dropout", "attention_dropout"), max_positions_key="max_position_embeddings",
    unused_weights=(r"^vocab_(transform|layer_norm|projector)\.",),  # its masked-LM head
)
# ALBERT: one block's weights applied num_hidden_layers times (num_hidden_groups=1, inner_group_num=1 in every
# released checkpoint), so its one "block" is that shared layer: block selectors pick weights, and first:1 or
# all train every application of it. Inputs are embedding_size wide, mapped up to hidden_size by
# ``embedding_hidden_mapping_in`` (group ``embed``). A per-block AGOP (``lm2v phase``) hooks that one module,
# so it describes the input of its last application.
_ALBERT = ArchSpec(
    family="albert", blocks="encoder.albert_layer_groups.0.albert_layers", word_embed="embeddings.word_embeddings",
    pos_embed="embeddings.position_embeddings", causal=False, attn=("attention.",), mlp=("ffn.", "ffn_output."),
    dropout_keys=("hidden_dropout_prob", "attention_probs_dropout_prob"),
    max_positions_key="max_position_embeddings", model_kwargs=(("add_pooling_layer", False),),
    extra_embeds=("embeddings.token_type_embeddings",), input_width_key="embedding_size",
    embed_modules=("encoder.embedding_hidden_mapping_in",), assumes=(("num_hidden_groups", 1), ("inner_group_num", 1)),
    unused_weights=(r"^pooler\.", r"^predictions\.", r"^sop_classifier\."),
)
# XLNet: relative sinusoidal positions (no table), bidirectional content stream as used for fine-tuning
# (attn_type "bi"; no perm_mask / target_mapping, so no query stream). It takes only a (B, T) padding mask,
# and its blocks need the model's relative encodings (no standalone call). Without token types and the query
# stream, the segment terms and the mask embedding never see a patch token.
_XLNET = ArchSpec(
    family="xlnet", blocks="layer", word_embed="word_embedding", pos_embed=None, causal=False,
    attn=("rel_attn.",), mlp=("ff.",), dropout_keys=("dropout",), max_positions_key=None,
    unused_params=(r"\.seg_embed$", r"\.r_s_bias$", r"^mask_emb$"), assumes=(("attn_type", "bi"),),
    mask_4d=False, standalone_blocks=False, attention_kernels=False, unused_weights=(r"^lm_loss\.",),
)
ARCH.update({"distilbert": _DISTILBERT, "albert": _ALBERT, "xlnet": _XLNET})


def arch_for(model_type: str) -> ArchSpec:
    """The layout of ``model_type``; unknown families are a one-line error."""
    try:
        return ARCH[model_type]
    except KeyError:
        raise Lm2vError(
            f"unsupported model family {model_type!r}; supported: {', '.join(sorted(ARCH))}"
        ) from None


# Tiny in-memory configs: one per family, for tests and quick checks (no download, no weights).
TINY_CONFIGS: dict[str, dict] = {
    "tiny-gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=2, n_positions=256, vocab_size=16,
                      bos_token_id=0, eos_token_id=0),
    "tiny-bert": dict(model_type="bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=256, vocab_size=16),
    # 256 + 2 positions as roberta-base's 512 + 2: ids start after the padding row (pad_token_id=1)
    "tiny-roberta": dict(model_type="roberta", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=258, vocab_size=16, pad_token_id=1,
                         type_vocab_size=1),
    "tiny-llama": dict(model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, intermediate_size=64, vocab_size=16, max_position_embeddings=256),
    "tiny-qwen2": dict(model_type="qwen2", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, intermediate_size=64, vocab_size=16, max_position_embeddings=256),
    "tiny-mistral": dict(model_type="mistral", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=16, intermediate_size=64, vocab_size=16,
                         max_position_embeddings=256),
    "tiny-qwen3": dict(model_type="qwen3", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=16, intermediate_size=64, vocab_size=16,
                       max_position_embeddings=256),
}


# -- language families of the phase paper: tiny configs (32 wide, 2 layers, as above) --------------------------
TINY_CONFIGS.update({
    "tiny-distilbert": dict(model_type="distilbert", dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                            max_position_embeddings=256, vocab_size=16),
    # embedding_size 16 != hidden_size 32, as albert-base-v2's 128 != 768: the factorised input is exercised
    "tiny-albert": dict(model_type="albert", hidden_size=32, embedding_size=16, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=256, vocab_size=16),
    "tiny-xlnet": dict(model_type="xlnet", d_model=32, n_layer=2, n_head=2, d_inner=64, vocab_size=16,
                       pad_token_id=0, bos_token_id=0, eos_token_id=0),
})


# =================================================================================================
# Image families (native vision models of Hugging Face transformers): the rows of the table for
# ``lm2vision.models.image.ImageBackbone``. Kept in their own block, apart from the language rows.
# Paths are attribute paths / parameter-name prefixes on the base model of ``AutoModel``.
# =================================================================================================
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm's IMAGENET_DEFAULT_*
HALF = (0.5, 0.5, 0.5)  # transformers' IMAGENET_STANDARD_*: ViT-style processors map pixels to [-1, 1]


@dataclass(frozen=True)
class ImageSpec:
    """How one family of image models is laid out, pooled and preprocessed.

    Groups (``ImageBackbone.layer_groups``): the parameters under ``blocks`` are ``block.<i>`` (the
    stages of hierarchical models); outside them ``stem`` prefixes are ``patch``, ``pos`` names are
    ``pos``, ``tokens`` names (class / distillation tokens) are ``embed``, ``post`` prefixes (layers
    between the last block and pooling) are ``final_norm`` with the norms outside the blocks.
    """

    family: str
    blocks: str  # ModuleList of blocks (transformers) or stages (hierarchical and CNN families)
    stem: tuple[str, ...]  # parameter-name prefixes of the patch embedding / convolutional stem
    pool: str  # "cls": token 0 of last_hidden_state; "mean": over tokens (B, T, C) or space (B, C, H, W)
    pool_norm: str | None = None  # module applied after pooling (ConvNeXt's final LayerNorm)
    pos: tuple[str, ...] = ()  # learned absolute position tables
    tokens: tuple[str, ...] = ()  # extra learned input tokens (CLS, distillation)
    post: tuple[str, ...] = ()  # parameter-name prefixes after the blocks that are not norms (EfficientNet's top conv)
    width: str = "hidden_sizes"  # config field of the pooled width (a list: its last entry)
    attn: str | None = None  # regex on the name inside a block: attention (transformer families)
    mlp: str | None = None  # regex on the name inside a block: MLP
    mean: tuple[float, float, float] = IMAGENET_MEAN  # the family's processor default, used without a preprocessor_config.json
    std: tuple[float, float, float] = IMAGENET_STD
    attention_kernels: bool = False  # the family takes ``attn_implementation`` (sdpa | eager)
    interpolate_pos: bool = False  # positions resize to another image size (``interpolate_pos_encoding``)
    dropout_keys: tuple[str, ...] = ()  # config fields set by ModelConfig.dropout
    model_kwargs: tuple[tuple[str, object], ...] = ()  # extra AutoModel kwargs (drop an unused pooler)
    unused_weights: tuple[str, ...] = ()  # regexes of checkpoint keys dropped on purpose


_VIT = ImageSpec(
    family="vit", blocks="layers", stem=("embeddings.patch_embeddings.",), pool="cls",
    pos=("embeddings.position_embeddings",), tokens=("embeddings.cls_token",),
    width="hidden_size", attn=r"^attention\.", mlp=r"^(mlp|intermediate|output)\.", mean=HALF, std=HALF, attention_kernels=True,
    interpolate_pos=True,
    dropout_keys=("hidden_dropout_prob", "attention_probs_dropout_prob"),
    model_kwargs=(("add_pooling_layer", False),), unused_weights=(r"^pooler\.",),
)
_CNN = ImageSpec(family="resnet", blocks="encoder.stages", stem=("embedder.",), pool="mean")

# Hugging Face ``config.model_type`` -> layout. The classifier heads of ``*ForImageClassification``
# read exactly this pooled vector: CLS for ViT and DeiT (DeiT's classifier head; its distillation
# token is an input of the distilled head only), the spatial / token mean otherwise.
IMAGE_ARCH: dict[str, ImageSpec] = {
    "vit": _VIT,
    "deit": replace(_VIT, family="deit", tokens=("embeddings.cls_token", "embeddings.distillation_token"),
                    mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "swin": ImageSpec(family="swin", blocks="encoder.layers", stem=("embeddings.patch_embeddings.",), pool="mean",
                      pos=("embeddings.position_embeddings",), width="hidden_size", attn=r"\.attention\.", mlp=r"\.(mlp|intermediate|output)\.",
                      attention_kernels=True, interpolate_pos=True, dropout_keys=("hidden_dropout_prob", "attention_probs_dropout_prob"),
                      model_kwargs=(("add_pooling_layer", False),)),
    "convnext": ImageSpec(family="convnext", blocks="encoder.stages", stem=("embeddings.",), pool="mean",
                          pool_norm="layernorm"),
    "resnet": _CNN,
    "regnet": replace(_CNN, family="regnet"),
    "bit": replace(_CNN, family="bit"),
    "efficientnet": ImageSpec(family="efficientnet", blocks="encoder.blocks", stem=("embeddings.",), pool="mean",
                              post=("encoder.top_conv.",), width="hidden_dim"),
}


def image_arch_for(model_type: str) -> ImageSpec | None:
    """The layout of an image family, or None when ``model_type`` is not one."""
    return IMAGE_ARCH.get(model_type)


# Tiny image configs (random weights, 32 px where the family has a native size): one per family.
TINY_IMAGE_CONFIGS: dict[str, dict] = {
    "tiny-vit": dict(model_type="vit", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, image_size=32, patch_size=8),
    "tiny-deit": dict(model_type="deit", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, image_size=32, patch_size=8),
    "tiny-swin": dict(model_type="swin", image_size=32, patch_size=2, embed_dim=16, depths=[1, 1],
                      num_heads=[2, 2], window_size=4),
    "tiny-convnext": dict(model_type="convnext", image_size=32, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, patch_size=2),
    "tiny-resnet": dict(model_type="resnet", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                        layer_type="basic"),
    "tiny-regnet": dict(model_type="regnet", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                        groups_width=8),
    "tiny-bit": dict(model_type="bit", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                     layer_type="bottleneck", num_groups=2),
    # hidden_dim must equal round_filters(1280 * width_coefficient) = 128, the top conv's width; at the
    # default initializer_range 0.02 the random activations vanish (exactly 0 after 7 blocks): 0.7 keeps O(1)
    "tiny-efficientnet": dict(model_type="efficientnet", image_size=32, width_coefficient=0.1,
                              depth_coefficient=0.1, hidden_dim=128, initializer_range=0.7),
    # MLP-Mixer has no transformers family: timm's class with mixer_s16_224's config (needs timm)
    "tiny-mixer": dict(timm="mixer_s16_224", timm_class="MlpMixer", num_blocks=2, embed_dim=32, img_size=32,
                       patch_size=8),
}


def tiny_config(name: str) -> dict | None:
    """The in-memory config of a tiny alias, language (:data:`TINY_CONFIGS`) or image
    (:data:`TINY_IMAGE_CONFIGS`), or None. The two tables stay apart: tests that cover every language
    family iterate :data:`TINY_CONFIGS`."""
    return TINY_CONFIGS.get(name) or TINY_IMAGE_CONFIGS.get(name)

# timm models (``model.name=timm:NAME``, optional): timm pools and preprocesses by itself
# (``forward_head(pre_logits=True)``, ``pretrained_cfg``) and names its own blocks and stem
# (``group_matcher``); the row names the rest.
TIMM_PREFIX = "timm:"


def timm_name(name: str) -> tuple[str, dict] | None:
    """(timm model name, ``timm.create_model`` keyword arguments) of ``timm:NAME`` or of a tiny
    timm config (``tiny-mixer``), else None."""
    if name.startswith(TIMM_PREFIX):
        return name[len(TIMM_PREFIX):], {}
    tiny = TINY_IMAGE_CONFIGS.get(name, {})
    if "timm" in tiny:
        return tiny["timm"], {k: v for k, v in tiny.items() if k != "timm"}
    return None
TIMM_SPEC = ImageSpec(
    family="timm", blocks="", stem=(), pool="timm",
    pos=("pos_embed",), tokens=("cls_token", "reg_token", "dist_token"), post=("conv_head.", "head."),
    width="num_features", attn=r"(^|\.)attn\.", mlp=r"(^|\.)mlp(_channels|_tokens)?\.",
)
