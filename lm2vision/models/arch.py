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

    @property
    def rotary(self) -> bool:
        return self.pos_embed is None

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
