"""Layer similarity: linear and minibatch CKA against closed-form answers, per-layer features of tiny
backbones, and ``lm2v analyze --compare-model`` writing the layer CKA of two tiny runs."""
from __future__ import annotations

import csv
import json
import math
import re

import pytest
import torch

from conftest import FAMILIES
from lm2vision.analysis.cka import (MinibatchCKA, _gram_is_cheaper, _u_centred_gram, cka_matrix, linear_cka,
                                    matched_layers, mean_cosine, minibatch_cka)
from lm2vision.analysis.features import layer_features, layer_names
from lm2vision.cli import main as cli_main
from lm2vision.errors import Lm2vError, Lm2vWarning
from lm2vision.models import ModelConfig, create_backbone
from test_analysis_report import _write_images

pytestmark = pytest.mark.usefixtures("one_thread")  # small matrices: threads on a shared CPU only contend


def _gauss(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- linear CKA: closed-form answers ----------------------------------------------------------------
def test_cka_of_features_with_themselves_is_one():
    x = _gauss(100, 7)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x + 5.0, x) == pytest.approx(1.0, abs=1e-12)  # centring removes offsets


def test_invariant_to_orthogonal_maps_and_isotropic_scaling():
    x = _gauss(300, 16, dtype=torch.float32)  # float32 in, float64 inside
    q, _ = torch.linalg.qr(_gauss(16, 16, seed=1, dtype=torch.float32))  # random orthogonal Q
    assert linear_cka(x, 3.7 * x @ q) == pytest.approx(1.0, abs=1e-6)
    assert linear_cka(x @ q, x) == pytest.approx(1.0, abs=1e-6)


def test_not_invariant_to_non_isotropic_scaling():
    # centred, orthogonal columns of equal norm (X^T X = 4 I): with Y = X diag(1, s),
    # CKA = ||D||_F^2 / (||I||_F ||D^2||_F) = (1 + s^2) / sqrt(2 (1 + s^4)); s = 10: 101 / sqrt(20002)
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    cka = linear_cka(x, x * torch.tensor([1.0, 10.0]))
    assert cka == pytest.approx(101 / math.sqrt(20002), rel=1e-12)  # 0.71416...
    assert cka < 0.75


def test_independent_gaussian_features_score_near_d_over_n():
    # X, Y independent N(0, I_d), n rows: E||X^T Y||_F^2 = n d^2 (d^2 entries, each a sum of n unit-variance
    # products) and ||X^T X||_F ~ n sqrt(d) (diagonal ~ n), so CKA ~ n d^2 / (n^2 d) = d / n = 0.005
    n, d = 2000, 10
    cka = linear_cka(_gauss(n, d, seed=1), _gauss(n, d, seed=2))
    assert cka < 0.05
    assert 0.5 * d / n < cka < 2 * d / n


def test_rank_one_by_hand():
    # one feature each: CKA = squared Pearson correlation. Centred a = (-1.5, -0.5, 0.5, 1.5), |a|^2 = 5;
    # centred b = (-2, 0, -1, 3), |b|^2 = 14; a.b = 3 + 0 - 0.5 + 4.5 = 7; CKA = 49 / 70 = 0.7
    a = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    b = torch.tensor([[1.0], [3.0], [2.0], [6.0]])
    assert linear_cka(a, b) == pytest.approx(0.7, abs=1e-12)
    assert cka_matrix([a], [b]).item() == pytest.approx(0.7, abs=1e-12)


@pytest.mark.parametrize("n,gram", [(40, True), (400, False)])
def test_matrix_routes_match_the_pairwise_formula(n, gram):
    feats_a = [_gauss(n, 64, seed=1), _gauss(n, 48, seed=2)]
    base = feats_a[0][:, :30]
    feats_b = [base @ _gauss(30, 80, seed=3) + 0.1 * _gauss(n, 80, seed=4), _gauss(n, 50, seed=5), base]
    assert _gram_is_cheaper(n, feats_a, feats_b) == gram  # both exact routes are exercised
    out = cka_matrix(feats_a, feats_b)
    assert out.shape == (2, 3) and out.dtype == torch.float64
    expect = torch.tensor([[linear_cka(x, y) for y in feats_b] for x in feats_a], dtype=torch.float64)
    torch.testing.assert_close(out, expect, rtol=1e-10, atol=1e-12)


def test_constant_layer_is_nan_and_mismatched_rows_are_one_line():
    assert math.isnan(linear_cka(torch.ones(10, 3), _gauss(10, 3)))
    assert math.isnan(cka_matrix([torch.ones(10, 3)], [_gauss(10, 3)]).item())
    with pytest.raises(Lm2vError, match="CKA compares the same images: 10 rows vs 9 rows"):
        linear_cka(_gauss(10, 3), _gauss(9, 3))


# -- minibatch CKA -----------------------------------------------------------------------------------
def test_u_centred_gram_gives_song_et_al_unbiased_hsic():
    # Song et al. 2012, eq. 5, written out: K~, L~ = K, L with zero diagonal
    m = 12
    x, y = _gauss(m, 3, seed=1), _gauss(m, 5, seed=2)
    k, l = x @ x.T, y @ y.T
    k, l = k - torch.diag(torch.diagonal(k)), l - torch.diag(torch.diagonal(l))
    one = torch.ones(m, dtype=torch.float64)
    song = (torch.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((m - 1) * (m - 2))
            - 2 / (m - 2) * (one @ k @ l @ one)) / (m * (m - 3))
    ours = _u_centred_gram(x) @ _u_centred_gram(y) / (m * (m - 3))
    assert ours.item() == pytest.approx(song.item(), rel=1e-10)


def test_minibatch_cka_converges_to_the_population_value():
    # x ~ N(0, I_8), y = x[:, :6] + N(0, I_6): Sigma_xy = [I_6; 0], Sigma_yy = 2 I_6, so the population
    # CKA = ||Sigma_xy||^2 / (||I_8|| ||2 I_6||) = 6 / (sqrt(8) * 2 sqrt(6)) = sqrt(6 / 8) / 2 = 0.4330.
    # Over 20,000 images both estimators sit within ~1/sqrt(n) of it (the biased one also O(d/n) off);
    # 40 batches of 500 track the full-set value to a few 1e-4.
    n = 20_000
    x = _gauss(n, 8, seed=1)
    y = x[:, :6] + _gauss(n, 6, seed=2)
    full, mini = linear_cka(x, y), minibatch_cka(x, y, batch_size=500)
    assert full == pytest.approx(math.sqrt(6 / 8) / 2, abs=0.01)
    assert mini == pytest.approx(full, abs=0.003)
    assert mini == pytest.approx(math.sqrt(6 / 8) / 2, abs=0.01)


def test_accumulator_builds_the_whole_matrix_in_one_pass():
    n = 1200
    x = _gauss(n, 8, seed=1)
    feats_a = [x, x[:, :4]]
    feats_b = [x @ torch.linalg.qr(_gauss(8, 8, seed=2))[0], _gauss(n, 5, seed=3), x[:, :6] + _gauss(n, 6, seed=4)]
    acc = MinibatchCKA(2, 3)
    for i in range(0, n, 200):
        acc.update([f[i:i + 200] for f in feats_a], [f[i:i + 200] for f in feats_b])
    out = acc.compute()
    assert out.shape == (2, 3) and acc.images == n
    assert out[0, 0].item() == pytest.approx(1.0, abs=1e-12)  # an orthogonal map of the same features
    assert abs(out[0, 1].item()) < 0.02  # independent: the unbiased estimator centres on 0
    torch.testing.assert_close(out[1, 2], torch.tensor(minibatch_cka(feats_a[1], feats_b[2], 200), dtype=torch.float64))
    with pytest.raises(Lm2vError, match="at least 4 images"):
        acc.update([f[:3] for f in feats_a], [f[:3] for f in feats_b])


# -- mean cosine and matched depth -------------------------------------------------------------------
def test_mean_cosine_by_hand():
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    assert mean_cosine(x, y) == pytest.approx(0.5, abs=1e-12)  # cosines 0 and 1
    assert mean_cosine(x, -x) == pytest.approx(-1.0, abs=1e-12)
    with pytest.raises(Lm2vError, match="equal width"):
        mean_cosine(x, torch.ones(2, 3))


@pytest.mark.parametrize("la,lb,expect", [
    (3, 3, [0, 1, 2]), (3, 5, [0, 2, 4]), (5, 3, [0, 1, 1, 2, 2]),  # i/2 = 0.5, 1.5 round up
    (4, 13, [0, 4, 8, 12]), (13, 4, [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]), (1, 5, [0]), (2, 1, [0, 0]),
])
def test_matched_relative_depth(la, lb, expect):
    assert matched_layers(la, lb) == expect


# -- per-layer features ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILIES)
def test_layer_features_of_tiny_backbones(name):
    torch.manual_seed(0)
    model = create_backbone(ModelConfig(name=name, pretrained=False, image_size=16, patch_size=4)).train()
    x = _gauss(6, 3, 16, 16, dtype=torch.float32)
    feats = layer_features(model, x, batch_size=6, pooling="model")
    assert model.training  # mode restored
    assert len(feats) == model.num_blocks + 1 == len(layer_names(len(feats)))
    assert all(f.shape == (6, 32) and f.dtype == torch.float32 for f in feats)
    model.eval()
    with torch.no_grad():
        tokens = model.forward_features(x)  # (B, T, C)
        assert torch.equal(feats[-1], model.pool(tokens))
        # Hugging Face's own hidden_states (embedding output, every block, final norm last) as the reference
        hidden = model.lm(inputs_embeds=model.patch_embed(x), output_hidden_states=True).hidden_states
    for mine, theirs in zip(feats, hidden):
        torch.testing.assert_close(mine, model.pool(theirs), rtol=1e-5, atol=1e-6)
    mean = layer_features(model, x, batch_size=4, pooling="mean")  # batches of 4 and 2
    torch.testing.assert_close(mean[-1], tokens.mean(dim=1), rtol=1e-5, atol=1e-6)


def test_layer_features_of_a_pixel_model_and_refusal_of_a_text_model():
    from transformers import OPTConfig, OPTModel, ViTConfig, ViTModel

    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=16, patch_size=4)).eval()
    x = _gauss(5, 3, 16, 16, dtype=torch.float32)
    feats = layer_features(vit, x, batch_size=5)
    with torch.no_grad():
        hidden = vit(pixel_values=x, output_hidden_states=True).hidden_states
    assert len(feats) == 3 and torch.equal(feats[-1], hidden[-1].mean(dim=1))
    opt = OPTModel(OPTConfig(hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2, vocab_size=16,
                             max_position_embeddings=32, word_embed_proj_dim=16))
    with pytest.raises(Lm2vError, match="OPTModel takes no images"):
        layer_features(opt, x)


# -- lm2v analyze --compare-model: the layers part ----------------------------------------------------
@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A tiny BERT run (2 blocks) and a 3-block GPT-2 run (config only, fresh init), 1 epoch each."""
    from transformers import GPT2Config

    from lm2vision.config import load_config
    from lm2vision.train import RunConfig, run_stage

    base = tmp_path_factory.mktemp("cka")
    _write_images(base / "data", "train", 8, 0)
    _write_images(base / "data", "test", 6, 1)
    GPT2Config(n_embd=32, n_layer=3, n_head=2, n_positions=64, vocab_size=16).save_pretrained(base / "gpt2_3")
    runs = {}
    for key, model in (("a", "tiny-bert"), ("b", str(base / "gpt2_3"))):
        cfg = load_config(RunConfig, None, [
            "stage=train", f"data.dataset={base / 'data'}", "data.val_fraction=0.25", f"model.name={model}",
            "model.pretrained=false", "model.image_size=16", "model.patch_size=4", "optim.epochs=1",
            "optim.batch_size=9", "runtime.progress=false", "runtime.tensorboard=false"])
        run_stage(cfg, base / key)
        runs[key] = base / key
    return runs


def _read_csv(path):
    rows = list(csv.reader(path.open()))
    values = [[float(v) for v in r[1:]] for r in rows[1:]]
    return rows[0][1:], [r[0] for r in rows[1:]], torch.tensor(values, dtype=torch.float64)


def test_analyze_writes_layer_cka_against_runs_names_and_pixel_models(two_runs, tmp_path):
    from transformers import OPTConfig, OPTModel, ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=16, patch_size=4)).save_pretrained(tmp_path / "vit")
    OPTModel(OPTConfig(hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2, vocab_size=16,
                       max_position_embeddings=32, word_embed_proj_dim=16)).save_pretrained(tmp_path / "opt")
    out = tmp_path / "report"
    argv = ["analyze", str(two_runs["a"]), "--out", str(out), "--no-progress", "--samples", "18",
            "--skip", "curves,weights,landscape,features,alignment,geometry"]
    for spec in (two_runs["b"], two_runs["a"], "tiny-llama@scratch", tmp_path / "vit", tmp_path / "opt"):
        argv += ["--compare-model", str(spec)]
    with pytest.warns(Lm2vWarning) as caught:
        assert cli_main.main(argv) == 0
    assert [str(w.message) for w in caught] == [
        f"layers: skipped {tmp_path / 'opt'}: no image input (neither an lm2vision backbone nor a pixel model)"]
    cols, rows, cka = _read_csv(out / "layers" / "cka_run_b.csv")
    assert cka.shape == (3, 4)  # (La, Lb): 2 + 1 layers of the BERT run, 3 + 1 of the GPT-2 run
    assert rows == ["embed", "block.0", "block.1"] and cols == ["embed", "block.0", "block.1", "block.2"]
    assert ((cka >= 0) & (cka <= 1 + 1e-9)).all()
    _, _, self_cka = _read_csv(out / "layers" / "cka_run_a.csv")
    assert self_cka.diagonal().tolist() == pytest.approx([1.0] * 3, abs=1e-6)  # the run against itself
    numbers = json.loads((out / "analysis.json").read_text())["Layer similarity"]
    summary = {r["model"]: r for r in numbers["CKA per compare model"]}
    assert list(summary) == ["run:b", "run:a", "tiny-llama@scratch", str(tmp_path / "vit")]
    assert summary["run:a"]["matched_cka_mean"] == pytest.approx(1.0, abs=1e-6)
    assert summary["run:a"]["matched_cosine_mean"] == pytest.approx(1.0, abs=1e-6)
    assert [r["compare_layer"] for r in numbers["matched depth: run:b"]] == ["embed", "block.1", "block.2"]
    saved = torch.tensor(json.loads((out / "layers.json").read_text())["run:b"]["cka"], dtype=torch.float64)
    torch.testing.assert_close(saved, cka, rtol=0, atol=1e-15)  # the CSV holds every digit
    html = (out / "report.html").read_text()
    assert "<h2>Layer similarity</h2>" in html and "no image input" in html
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 4  # one heatmap per compared model


def test_skip_layers_and_no_compare_model(two_runs, tmp_path):
    base = ["analyze", str(two_runs["a"]), "--no-progress", "--samples", "18",
            "--skip", "curves,weights,landscape,features,alignment,geometry"]
    assert cli_main.main(base + ["--out", str(tmp_path / "s"), "--skip", "layers", "--compare-model", "tiny-gpt2"]) == 0
    assert "Layer similarity" not in (tmp_path / "s" / "report.html").read_text()
    assert not (tmp_path / "s" / "layers.json").exists()
    assert cli_main.main(base + ["--out", str(tmp_path / "n")]) == 0
    assert "layers: no --compare-model to compare with" in (tmp_path / "n" / "report.html").read_text()
