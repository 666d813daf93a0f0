"""Analyses behind the paper's evidence, usable on any model and on any run directory.

- :mod:`.weights`: outlier shares (|w| > 1 and z-score), kurtosis, per block; overlaid histograms.
- :mod:`.landscape`: 2-D loss slices (random, filter-normalised, or training direction).
- :mod:`.features`: pooled features -> t-SNE / PCA, silhouette, kNN and linear CV accuracy.
- :mod:`.alignment`: patch-embedding vs patch covariance eigenbases (Theorem 4.1).
- :mod:`.curves`, :mod:`.report`, :mod:`.run`: curves, HTML / Markdown reports, ``analyze_run``.

Import the sub-modules you need; this package imports nothing heavy on its own.
"""

__all__ = ["weights", "landscape", "features", "alignment", "curves", "report", "run", "models"]
