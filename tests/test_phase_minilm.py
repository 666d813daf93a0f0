"""``lm2v phase`` on the bundled MiniLM, offline: the slow end-to-end test (about 30-60 s on 2 CPU cores)."""
import csv

from lm2vision.cli.main import main


def test_phase_minilm_offline(tmp_path, capsys):
    """The bundled MiniLM on both sides (vision through create_backbone), offline; the slow test (~30-60 s)."""
    out = tmp_path / "m"
    assert main(["phase", "--vision", "minilm", "--language", "minilm", "--out", str(out), "--samples", "30", "--ntk-samples", "4", "--agop-samples", "2", "--no-progress", "out_dim=4"]) == 0
    with open(out / "table.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert 0 < float(row["S_v"]) < 1 and 0 < float(row["S_l"]) < 1  # pretrained != fresh init
    assert 0 < float(row["S_cross"]) <= 1 and float(row["agop_ratio_l"]) > 1
    assert "| minilm | minilm |" in capsys.readouterr().out
