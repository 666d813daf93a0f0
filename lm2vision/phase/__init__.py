"""Cross-modal phase diagnostics (seed 2): empirical NTK, kernel stability S, AGOP, alignment score,
pair screening (``lm2v phase``) and the phase controller for stage 1."""
from .agop import Spectrum, agop, effective_rank, layer_agops, spectrum
from .alignment import AlignmentScore, alignment_score
from .controller import PhaseConfig, PhaseController
from .encoders import TextEmbedder, VisionEmbedder, load_language, load_vision, tokenize
from .ntk import CountSketch, NTKConfig, empirical_ntk, empirical_ntk_fn, ntk_diagonal, ntk_trace, sample_fn
from .screen import ScreenConfig, screen
from .similarity import center, kernel_similarity, kernel_similarity_t, phase_label

__all__ = [
    "NTKConfig", "empirical_ntk", "empirical_ntk_fn", "ntk_diagonal", "ntk_trace", "sample_fn", "CountSketch",
    "kernel_similarity", "kernel_similarity_t", "center", "phase_label",
    "agop", "layer_agops", "spectrum", "effective_rank", "Spectrum",
    "alignment_score", "AlignmentScore",
    "VisionEmbedder", "TextEmbedder", "load_vision", "load_language", "tokenize",
    "ScreenConfig", "screen", "PhaseConfig", "PhaseController",
]
