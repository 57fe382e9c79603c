"""The synthetic data set: layout, determinism, label validity, and the data CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slimyolo.data.dataset import LabelReport, load_image, read_data_file, read_labels
from slimyolo.data.synth import SHAPES, render_image, write_synthetic
from slimyolo.errors import SlimYoloError


def test_layout_and_labels(tmp_path):
    data = write_synthetic(tmp_path / "s", classes=3, train=12, val=4, size=96, seed=5)
    spec = read_data_file(tmp_path / "s")
    assert spec.path == data.resolve()
    assert spec.classes == 3 and spec.names == list(SHAPES[:3])
    assert len(spec.train) == 12 and len(spec.valid) == 4
    report = LabelReport()
    counts = np.zeros(3, int)
    for image in spec.train + spec.valid:
        img = load_image(image)
        assert max(img.shape[:2]) == 96 and min(img.shape[:2]) >= 0.6 * 96 - 2
        labels = read_labels(image, 3, report)
        counts += np.bincount(labels[:, 0].astype(int), minlength=3)
    assert not report.bad_lines and report.missing == 0
    assert (counts > 0).all()  # every class appears


def test_deterministic_and_prefix_stable(tmp_path):
    a = write_synthetic(tmp_path / "a", classes=2, train=6, val=2, size=64, seed=1).parent
    b = write_synthetic(tmp_path / "b", classes=2, train=9, val=2, size=64, seed=1).parent
    c = write_synthetic(tmp_path / "c", classes=2, train=6, val=2, size=64, seed=2).parent
    for rel in ("images/train/000005.jpg", "labels/train/000005.txt", "images/valid/000001.jpg"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()  # more images do not change the first ones
    assert (a / "images/train/000000.jpg").read_bytes() != (c / "images/train/000000.jpg").read_bytes()


def test_objects_vary_in_scale():
    sizes = []
    for i in range(40):
        _, labels = render_image(2, 128, np.random.default_rng((0, 0, i)))
        sizes += list(np.sqrt(labels[:, 3] * labels[:, 4]))
        assert ((labels[:, 1:] >= 0) & (labels[:, 1:] <= 1)).all()
    assert min(sizes) < 0.1 and max(sizes) > 0.3  # small and large objects (relative to the image)


def test_bad_arguments_and_existing_folder(tmp_path):
    with pytest.raises(SlimYoloError, match=r"--classes must be 1\.\.8"):
        write_synthetic(tmp_path / "x", classes=9)
    (tmp_path / "exists").mkdir()
    with pytest.raises(SlimYoloError, match="already exists"):
        write_synthetic(tmp_path / "exists", train=1, val=0)
    assert not (tmp_path / "x").exists()


def test_cli_synth_and_check(run_cli, tmp_path):
    out = tmp_path / "d"
    code, _, err = run_cli("data", "synth", "--out", out, "--classes", "2", "--train", "5", "--val", "3",
                           "--size", "64", "--seed", "3")
    assert code == 0 and "2 classes, 5 training and 3 validation images" in err
    code, stdout, _ = run_cli("data", "check", out, "--json")
    report = json.loads(stdout)
    assert code == 0 and report["images"] == {"train": 5, "valid": 3}
    assert report["bad_images"] == 0 and report["bad_label_lines"] == 0
    # Break one label line and one image: check reports both and exits 1.
    (out / "labels/train/000000.txt").write_text("5 0.5 0.5 0.1 0.1\n")
    (out / "images/valid/000000.jpg").write_bytes(b"garbage")
    code, stdout, err = run_cli("data", "check", out)
    assert code == 1 and "1 unreadable images, 1 malformed label lines skipped" in stdout
    assert "images/valid/000000.jpg" in err
