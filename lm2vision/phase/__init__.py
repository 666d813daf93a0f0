"""Cross-modal phase diagnostics (seed 2): empirical NTK, kernel stability S, AGOP, alignment score
and pair screening (``lm2v phase``). Phase-aware training (the stage-1 controller that uses them)
lives with the trainer: :mod:`lm2vision.train.phase_hooks`."""
from .agop import Spectrum, agop, effective_rank, layer_agops, spectrum
from .alignment import AlignmentScore, alignment_score
from .encoders import TextEmbedder, VisionEmbedder
from .ntk import CountSketch, NTKConfig, empirical_ntk, empirical_ntk_fn, ntk_diagonal, ntk_trace, sample_fn
from .screen import ScreenConfig, screen
from .sides import load_language, load_vision, tokenize
from .similarity import center, kernel_similarity, kernel_similarity_t, phase_label

__all__ = [
    "NTKConfig", "empirical_ntk", "empirical_ntk_fn", "ntk_diagonal", "ntk_trace", "sample_fn", "CountSketch",
    "kernel_similarity", "kernel_similarity_t", "center", "phase_label",
    "agop", "layer_agops", "spectrum", "effective_rank", "Spectrum",
    "alignment_score", "AlignmentScore",
    "VisionEmbedder", "TextEmbedder", "load_vision", "load_language", "tokenize",
    "ScreenConfig", "screen",
]
