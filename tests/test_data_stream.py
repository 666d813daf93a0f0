"""Streamed data (data.storage=stream): the same batches, losses and resume as the in-memory path,
the automatic choice and its printed line, and the one-line refusals."""
from __future__ import annotations

import tarfile
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lm2vision.data import DataConfig, LazyImageSet, bundled_path, load_imageset_splits, read_dataset
from lm2vision.data.stream import storage_choice
from lm2vision.errors import Lm2vError
from lm2vision.train import read_metrics, run_stage
from lm2vision.train.distributed import Runtime
from lm2vision.train.loop import ClassificationSteps, DeviceSet, StreamSet, epoch_plan
from lm2vision.train.recipe import stage_config
from lm2vision.train.rundir import TIMING_KEYS

CLASSES, TRAIN, TEST = 3, 16, 4  # 60 JPEG files: 48 train (36 + 12 val carved) + 12 test


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """train/<class>/*.jpg and test/<class>/*.jpg: 3 classes of the bundled CIFAR subset, 32x32."""
    root = tmp_path_factory.mktemp("jpg")
    sets = read_dataset(bundled_path(), "folder")
    for split, per in (("train", TRAIN), ("test", TEST)):
        s = sets[split]
        for c in range(CLASSES):
            for i in (s.labels == c).nonzero().flatten()[:per].tolist():
                path = root / split / s.classes[c] / f"{i:05d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(s.images[i].permute(1, 2, 0).numpy()).save(path, quality=90)
    return root


def data_cfg(root, **kw) -> DataConfig:
    return DataConfig(dataset=str(root), val_fraction=0.25, workers=2, **kw)


def pil_batch(root, names: list[str]) -> torch.Tensor:
    """The files decoded by Pillow alone: the known answer of a streamed batch."""
    arrs = [np.asarray(Image.open(root / n).convert("RGB")) for n in names]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("accum, erasing", [(1, 0.0), (2, 0.5)])
def test_streamed_micro_batches_equal_the_in_memory_ones(jpegs, accum, erasing):
    if erasing:
        pytest.importorskip("kornia")  # random erasing: kornia's draws, seeded per micro-batch
    mem = load_imageset_splits(data_cfg(jpegs, storage="memory"), stream_ok=True)
    lazy = load_imageset_splits(data_cfg(jpegs, storage="stream"), stream_ok=True)
    assert isinstance(lazy.train, LazyImageSet) and not isinstance(mem.train, LazyImageSet)
    assert (len(lazy.train), len(lazy.val), len(lazy.test)) == (36, 12, 12)
    rt, dcfg = Runtime(torch.device("cpu"), None), data_cfg(jpegs, random_erasing=erasing)
    dmem, dstream = DeviceSet.of(mem.train, rt.device), StreamSet.of(lazy.train, rt.device, dcfg)
    order, _ = epoch_plan(36, 0, 5, 8, dcfg, 1.0, rt)  # (4 steps, 8)
    order = order.reshape(4 * accum, 8 // accum)
    n = 0
    for idx, a, b in zip(order, dmem.gather(order), dstream.gather(order)):
        assert torch.equal(a, b)  # uint8, decoded in two worker processes
        assert torch.equal(b, pil_batch(jpegs, [lazy.train.names[i] for i in idx.tolist()]))
        n += 1
    assert n == 4 * accum
    steps = [ClassificationSteps(d, dcfg, 32, 5, 8, 0.0, rt) for d in (dmem, dstream)]
    pairs = list(zip(steps[0].batches(0, accum), steps[1].batches(0, accum)))
    assert len(pairs) == 4 * accum
    for (xa, ya), (xb, yb) in pairs:
        assert xa.dtype == torch.float32 and xa.shape == (8 // accum, 3, 32, 32)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def run_overrides(root, *extra: str) -> list[str]:
    return ["model.name=tiny-bert", "model.pretrained=false", "model.dropout=0.1", f"data.dataset={root}",
            "data.val_fraction=0.25", "optim.batch_size=8", "optim.epochs=2", "runtime.progress=false",
            "runtime.tensorboard=false", "data.workers=2", *extra]


def records(run) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(run)]


@pytest.mark.parametrize("accum", [1, 2])
def test_a_streamed_stage_logs_the_same_losses_as_in_memory(jpegs, tmp_path, accum):
    over = run_overrides(jpegs, f"optim.accum_steps={accum}")
    mem = run_stage(stage_config("train", None, over + ["data.storage=memory"]), tmp_path / "mem")
    stream = run_stage(stage_config("train", None, over + ["data.storage=stream"]), tmp_path / "stream")
    a, b = records(tmp_path / "mem"), records(tmp_path / "stream")
    assert [r["epoch"] for r in b if "train_loss" in r] == [1, 2]
    assert a == b  # every train_loss, val_acc, and the final test record, to the last bit
    assert stream["test_acc"] == mem["test_acc"]
    wa, wb = load_file(str(tmp_path / "mem" / "model.safetensors")), load_file(str(tmp_path / "stream" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_auto_streams_above_the_limit_says_so_and_resumes_exactly(jpegs, tmp_path, capsys):
    over = run_overrides(jpegs, "optim.epochs=3", "data.storage=auto", "data.memory_limit_gb=0.0001")
    full = run_stage(stage_config("bridge", None, over + ["labels.ratio=0.5"]), tmp_path / "full")
    # 60 images of 3 x 32 x 32 bytes = 184320 bytes = 0.000184 GB > 0.0001 GB
    assert ("data: storage auto -> stream: decoded uint8 train+val+test 0.000184 GB > data.memory_limit_gb=0.0001"
            in capsys.readouterr().out)
    part = run_stage(stage_config("bridge", None, over + ["labels.ratio=0.5", "runtime.stop_after=1"]),
                     tmp_path / "part")
    assert part == {"stopped": True, "epoch": 1}
    resumed = run_stage(stage_config("bridge", None, over + ["labels.ratio=0.5"]), tmp_path / "part", resume=True)
    assert resumed["test_acc"] == full["test_acc"]
    assert records(tmp_path / "full") == records(tmp_path / "part")
    wa, wb = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "part" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_storage_choice_line_and_threshold():
    assert storage_choice("auto", 184320, 0.001) == (
        False, "data: storage auto -> memory: decoded uint8 train+val+test 0.000184 GB <= data.memory_limit_gb=0.001")
    assert storage_choice("auto", 2 * 10**9 + 1, 2)[0] is True
    assert storage_choice("auto", 2 * 10**9, 2)[0] is False
    assert storage_choice("stream", 1, 8)[0] is True


def test_auto_keeps_an_archive_in_memory_and_stream_refuses_it(jpegs, tmp_path):
    archive = tmp_path / "set.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(jpegs, arcname="set")
    splits = load_imageset_splits(data_cfg(archive, storage="auto", memory_limit_gb=1e-6), stream_ok=True)
    assert not isinstance(splits.train, LazyImageSet)
    assert splits.note.endswith(f"but {archive} is an archive, read whole into memory; extract it and pass the "
                                "folder: kept in memory")
    with pytest.raises(Lm2vError, match=r"^data.storage=stream cannot stream .*set.tar.gz: .* is an archive") as e:
        load_imageset_splits(data_cfg(archive, storage="stream"), stream_ok=True)
    assert "\n" not in str(e.value)
    with pytest.raises(Lm2vError, match="cannot stream bundled: the bundled set is a .tar.gz archive"):
        load_imageset_splits(DataConfig(storage="stream"), stream_ok=True)
    # analysis and screening ask for no streaming: memory whatever data.storage says
    assert not isinstance(load_imageset_splits(data_cfg(jpegs, storage="stream")).train, LazyImageSet)


def test_corrupt_at_load_is_skipped_as_in_memory_and_later_is_an_error(jpegs, tmp_path):
    import shutil
    root = tmp_path / "copy"
    shutil.copytree(jpegs, root)
    first = sorted((root / "train").rglob("*.jpg"))[0]
    first.write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning, match=r"skipped 1 item\(s\).*corrupt, unreadable or unsupported image files \(1\)"):
        lazy = load_imageset_splits(data_cfg(root, storage="stream"), stream_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mem = load_imageset_splits(data_cfg(root, storage="memory"))
    assert len(lazy.train) + len(lazy.val) == len(mem.train) + len(mem.val) == 47
    assert torch.equal(lazy.val.load(range(len(lazy.val))), mem.val.images)
    victim = lazy.train.names[3]
    (root / victim).write_bytes((root / victim).read_bytes()[:40])  # truncated after the header was read
    data = StreamSet.of(lazy.train, torch.device("cpu"), data_cfg(root))
    with pytest.raises(Lm2vError, match=f"^cannot decode streamed image {victim}: ") as e:
        list(data.gather([torch.arange(8)]))
    assert "\n" not in str(e.value)
