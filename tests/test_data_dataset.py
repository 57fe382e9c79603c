"""Darknet-layout data sets: the .data file, image lists, label files, images, and their errors."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from slimyolo.data.dataset import label_path, load_image, read_data_file, read_labels
from slimyolo.errors import NotFoundError, SlimYoloError


def _image(path, h=40, w=60):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 90, np.uint8))
    return path


@pytest.fixture
def darknet_set(tmp_path):
    """A hand-made data set laid out as darknet users do: relative list entries, a names file."""
    root = tmp_path / "set"
    for split in ("train", "valid"):
        for i in range(2):
            _image(root / "images" / split / f"{i}.png")
            lbl = root / "labels" / split / f"{i}.txt"
            lbl.parent.mkdir(parents=True, exist_ok=True)
            lbl.write_text("1 0.5 0.5 0.2 0.4\n")
    (root / "train.txt").write_text("images/train/0.png\n\n# a comment\nimages/train/1.png\n")
    (root / "obj.names").write_text("cat\ndog\n")
    (root / "obj.data").write_text("classes = 2\ntrain = train.txt\nvalid = images/valid\nnames = obj.names\n"
                                   "backup = backup/\n")
    return root


def test_read_data_file_resolves_lists_and_folders(darknet_set, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative entries resolve against the .data folder, not the cwd
    for where in (darknet_set / "obj.data", darknet_set):
        spec = read_data_file(where)
        assert spec.classes == 2 and spec.names == ["cat", "dog"]
        assert spec.path == (darknet_set / "obj.data").resolve()
        assert spec.train == [(darknet_set / "images" / "train" / f"{i}.png").resolve() for i in range(2)]
        assert spec.valid == [(darknet_set / "images" / "valid" / f"{i}.png").resolve() for i in range(2)]
        assert spec.split("val") == spec.valid


def test_a_users_own_data_set_may_name_any_path_a_checked_one_only_its_own(darknet_set, tmp_path):
    """The CLI reads a user's data set as darknet does; a data set from a request (``root``) stays in its folder."""
    outside = tmp_path / "elsewhere.names"
    outside.write_text("secret-1\nsecret-2\n")
    data = darknet_set / "obj.data"
    data.write_text(f"classes = 2\ntrain = train.txt\nvalid = images/valid\nnames = {outside}\n")
    assert read_data_file(data).names == ["secret-1", "secret-2"]  # the user's own files: any path
    cases = {
        f"names = {outside}": "obj.data:3: 'names' names '" + str(outside) + "', an absolute path",
        "names = ../elsewhere.names": "'names' names '../elsewhere.names', which leads outside",
        "names = ~/obj.names": "'names' names '~/obj.names', an absolute path",
        "train = ../set/../../x": "'train' names '../set/../../x', which leads outside",
        "valid = link": "'valid' names 'link', which leads outside",
        "train = missing.txt": "'train' names 'missing.txt', which does not exist (missing.txt)",
    }
    (darknet_set / "link").symlink_to(tmp_path)  # a folder of images outside, through a link
    for line, message in cases.items():
        key = line.split(" = ")[0]
        lines = {"classes": "classes = 2", "train": "train = train.txt", "names": "names = obj.names", key: line}
        data.write_text("\n".join(lines.values()) + "\n")
        with pytest.raises(SlimYoloError) as err:
            read_data_file(data, root=darknet_set)
        assert message in str(err.value), str(err.value)
        assert str(tmp_path) not in str(err.value).replace(str(outside), "") and "secret-1" not in str(err.value)
    # List entries: each must be a file of the data set (the working directory is never searched).
    (darknet_set / "train.txt").write_text("images/train/0.png\n../elsewhere.names\n")
    data.write_text("classes = 2\ntrain = train.txt\n")
    with pytest.raises(SlimYoloError, match=r"^train\.txt:2: an image of 'train' names '\.\./elsewhere\.names', "
                                            "which leads outside"):
        read_data_file(data, root=darknet_set)
    (darknet_set / "train.txt").write_text("images/train/0.png\nimages/train/7.png\n")
    with pytest.raises(NotFoundError, match=r"^train\.txt:2: an image of 'train' names 'images/train/7\.png', "
                                            "which is not a file of the data set"):
        read_data_file(data, root=darknet_set)
    (darknet_set / "train.txt").write_text("images/train/0.png\n")
    assert read_data_file(darknet_set, root=darknet_set).train == [(darknet_set / "images/train/0.png").resolve()]


def test_label_path_follows_darknet():
    assert label_path("/d/images/train/a.jpg").as_posix() == "/d/labels/train/a.txt"
    assert label_path("/images/x/images/b.png").as_posix() == "/images/x/labels/b.txt"  # the last one
    assert label_path("/voc/JPEGImages/c.jpeg").as_posix() == "/voc/labels/c.txt"
    assert label_path("/flat/d.jpg").as_posix() == "/flat/d.txt"


@pytest.mark.parametrize(("text", "message"), [
    ("classes = 3\ntrain = train.txt\nnames = obj.names\n", "the names file lists 2 names but classes = 3"),
    ("classes = two\ntrain = train.txt\n", ":1: 'classes' must be an integer"),
    ("classes = 2\nnames = obj.names\n", "missing 'train'"),
    ("classes = 2\ntrain train.txt\n", ":2: expected 'key = value'"),
    ("classes = 2\ntrain = nowhere.txt\n", ":2: 'train' names 'nowhere.txt', which does not exist"),
    ("train = train.txt\n", "needs 'classes' or 'names'"),
])
def test_bad_data_files_name_file_and_line(darknet_set, text, message):
    bad = darknet_set / "obj.data"
    bad.write_text(text)
    with pytest.raises(SlimYoloError) as err:
        read_data_file(bad)
    assert str(bad.resolve()) in str(err.value) or str(bad) in str(err.value)
    assert message in str(err.value)


def test_folder_needs_exactly_one_data_file(darknet_set, tmp_path):
    (darknet_set / "other.data").write_text("classes=1\ntrain=train.txt\n")
    with pytest.raises(SlimYoloError, match=r"exactly one \.data file; found 2"):
        read_data_file(darknet_set)
    with pytest.raises(NotFoundError):
        read_data_file(tmp_path / "missing.data")


def test_malformed_label_lines_are_skipped_and_reported(tmp_path, caplog):
    from slimyolo.data.dataset import LabelReport

    img = _image(tmp_path / "images" / "a.jpg")
    lbl = tmp_path / "labels" / "a.txt"
    lbl.parent.mkdir()
    lbl.write_text("0 0.5 0.5 0.2 0.2\n"
                   "1 0.5 0.5 0.2\n"        # 4 fields
                   "7 0.5 0.5 0.2 0.2\n"    # class out of range
                   "0 0.5 x 0.2 0.2\n"      # not a number
                   "0 1.5 0.5 0.2 0.2\n"    # not normalised
                   "0 0.5 0.5 0 0.2\n"      # empty box
                   "\n"
                   "1 0.25 0.75 0.5 0.5\n")
    report = LabelReport()
    with caplog.at_level(logging.WARNING):
        labels = read_labels(img, 2, report)
    np.testing.assert_allclose(labels, [[0, 0.5, 0.5, 0.2, 0.2], [1, 0.25, 0.75, 0.5, 0.5]])
    assert [m.split(": ")[0] for m in report.bad_lines] == [f"{lbl}:{n}" for n in (2, 3, 4, 5, 6)]
    assert f"{lbl}:3: class 7 is not an integer in 0..1" in caplog.text
    # A missing label file is a background image, counted but not an error.
    _image(tmp_path / "images" / "b.jpg")
    assert read_labels(tmp_path / "images" / "b.jpg", 2, report).shape == (0, 5) and report.missing == 1


def test_load_image(tmp_path):
    img = load_image(_image(tmp_path / "ok.png", 30, 50))
    assert img.shape == (30, 50, 3) and img.dtype == np.uint8
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), np.zeros((8, 9), np.uint8))
    assert load_image(gray).shape == (8, 9, 3)  # always BGR
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    for bad in (corrupt, tmp_path / "missing.jpg"):
        with pytest.raises(SlimYoloError, match=str(bad)):
            load_image(bad)
