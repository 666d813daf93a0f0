"""Short CPU trainings on the synthetic set beat the trivial baselines (tiny-bert, 32 px, patch 4)."""
import json

import pytest

from lm2vision.config import load_config
from lm2vision.dense.config import SegmentConfig
from lm2vision.dense.engine import run_dense
from conftest import DENSE_COMMON

pytestmark = pytest.mark.usefixtures("one_thread")


def test_segmenter_beats_majority_class(dense_synth, tmp_path):
    cfg = load_config(SegmentConfig, None, DENSE_COMMON + [
        f"data.root={dense_synth}", "data.layout=folder", "data.min_scale=1.0", "data.max_scale=1.0",
        "optim.epochs=6", "optim.lr=0.003", "head.d_model=32", "head.num_layers=1", "head.num_heads=2",
        "infer.mode=slide"])
    s = run_dense(cfg, tmp_path / "seg")
    # majority class (background) everywhere: pixel acc ~0.78, mIoU ~0.19 on this set
    assert 0.7 < s["test_baseline_pixel_acc"] < 0.85 and s["test_baseline_miou"] < 0.25
    assert s["test_miou"] > s["test_baseline_miou"] + 0.3
    assert s["test_pixel_acc"] > s["test_baseline_pixel_acc"] + 0.08
    records = [json.loads(l) for l in (tmp_path / "seg" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6, 6] and records[-1]["event"] == "test"
    assert records[-1]["test_miou"] == pytest.approx(records[-2]["val_miou"])  # final epoch, not the best
