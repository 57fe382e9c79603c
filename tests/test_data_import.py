"""``slimyolo data import``: VOC, VOCdevkit, COCO and YOLO sources → darknet data sets; every problem reported."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from slimyolo.cli import main
from slimyolo.data.dataset import read_data_file
from slimyolo.data.importer import ImportOptions, NothingImported, import_dataset
from slimyolo.errors import SlimYoloError

# (file, width, height, grey, objects as (class, xmin, ymin, xmax, ymax), VOC 1-based inclusive)
IMAGES = [
    ("a.jpg", 100, 80, False, [("cat", 11, 21, 50, 60), ("dog", 1, 1, 100, 80)]),
    ("b.jpg", 120, 90, False, [("dog", 61, 1, 120, 45)]),
    ("c.png", 64, 48, True, [("cat", 17, 13, 48, 36)]),
    ("d.jpg", 50, 40, False, []),
]
LABELS = {
    "a": "0 0.300000 0.500000 0.400000 0.500000\n1 0.500000 0.500000 1.000000 1.000000\n",
    "b": "1 0.750000 0.250000 0.500000 0.500000\n",
    "c": "0 0.500000 0.500000 0.500000 0.500000\n",
    "d": "",
}


def _image(path: Path, width: int, height: int, grey: bool = False, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (height, width) if grey else (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def _xml(filename: str, size: tuple[int, int] | None, objects, difficult: tuple[int, ...] = ()) -> str:
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    objs = "".join(
        f"<object><name>{c}</name><difficult>{int(i in difficult)}</difficult><bndbox><xmin>{x0}</xmin>"
        f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for i, (c, x0, y0, x1, y1) in enumerate(objects))
    return f"<annotation><folder>images</folder><filename>{filename}</filename>{size_xml}{objs}</annotation>"


def _voc(root: Path, images_dir: str = "images", xml_dir: str = "annotations") -> Path:
    for name, w, h, grey, objects in IMAGES:
        _image(root / images_dir / name, w, h, grey)
        (root / xml_dir).mkdir(parents=True, exist_ok=True)
        (root / xml_dir / f"{Path(name).stem}.xml").write_text(_xml(name, (w, h), objects))
    return root


def _labels(out: Path) -> dict[str, str]:
    return {p.stem: p.read_text() for p in sorted((out / "labels").glob("*.txt"))}


def _lists(out: Path) -> tuple[list[str], list[str]]:
    return tuple((out / f"{s}.txt").read_text().split() for s in ("train", "valid"))  # type: ignore[return-value]


def _jpeg_declaring(width: int, height: int) -> bytes:
    jpeg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    at = jpeg.find(b"\xff\xc0")
    return jpeg[:at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9:]


@pytest.fixture
def voc(tmp_path):
    return _voc(tmp_path / "voc")


def test_voc_labels_names_and_layout(voc, tmp_path):
    out = tmp_path / "out"
    report = import_dataset("voc", voc, out, ImportOptions(val_fraction=0.25))
    assert _labels(out) == LABELS
    assert (out / "out.names").read_text() == "cat\ndog\n"
    assert (out / "out.data").read_text() == "classes = 2\ntrain = train.txt\nvalid = valid.txt\nnames = out.names\n"
    assert report.names == ["cat", "dog"] and report.boxes == {"cat": 2, "dog": 2}
    assert (report.train, report.valid, report.background, report.issues) == (3, 1, 1, [])
    for name, *_ in IMAGES:  # the bytes, not re-encoded
        assert (out / "images" / name).read_bytes() == (voc / "images" / name).read_bytes()
    spec = read_data_file(out, root=out)  # relative paths inside: it can travel as an archive
    assert len(spec.train) == 3 and len(spec.valid) == 1 and spec.names == ["cat", "dog"]
    assert main(["data", "check", str(out)]) == 0


@pytest.mark.parametrize("fraction,counts", [(0.0, (4, 0)), (0.25, (3, 1)), (0.5, (2, 2)), (1.0, (0, 4))])
def test_split_fractions_and_seed(voc, tmp_path, fraction, counts):
    outs = [tmp_path / f"out{i}" for i in range(2)]
    for out in outs:
        import_dataset("voc", voc, out, ImportOptions(val_fraction=fraction, seed=3))
    lists = [_lists(out) for out in outs]
    assert tuple(len(x) for x in lists[0]) == counts
    assert lists[0] == lists[1]  # the same seed, the same split
    assert (outs[0] / "train.txt").read_bytes() == (outs[1] / "train.txt").read_bytes()
    spec = read_data_file(outs[0], root=outs[0])  # an empty list file is an empty split
    assert (len(spec.train), len(spec.valid)) == counts
    if not counts[0]:
        with pytest.raises(SlimYoloError, match="'train' split lists no images"):
            spec.split("train")


def test_seed_changes_the_split(tmp_path):
    root = tmp_path / "many"
    for i in range(20):
        _image(root / "images" / f"im{i:02d}.jpg", 32, 32, seed=i)
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"im{i:02d}.xml").write_text(_xml(f"im{i:02d}.jpg", (32, 32), [("x", 1, 1, 8, 8)]))
    splits = {seed: (import_dataset("voc", root, tmp_path / f"s{seed}", ImportOptions(val_fraction=0.2, seed=seed)),
                     _lists(tmp_path / f"s{seed}")[1]) for seed in (0, 1)}
    assert all((r.train, r.valid) == (16, 4) for r, _ in splits.values())
    assert splits[0][1] != splits[1][1]


def _coco(voc: Path, root: Path) -> Path:
    """The test's VOC set exported as COCO: non-dense ids, one iscrowd box, one unknown category id."""
    cats = {"cat": 5, "dog": 9}
    images, anns = [], []
    for i, (name, w, h, grey, objects) in enumerate(IMAGES):
        _image(root / "images" / "sub" / name, w, h, grey)  # in a folder: file_name is relative to images/
        (root / "images" / "sub" / name).write_bytes((voc / "images" / name).read_bytes())
        images.append({"id": 100 + i, "file_name": f"sub/{name}", "width": w, "height": h})
        for c, x0, y0, x1, y1 in objects:
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": cats[c], "iscrowd": 0,
                         "bbox": [x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1]})
    anns.append({"id": 90, "image_id": 100, "category_id": 5, "iscrowd": 1, "bbox": [0, 0, 10, 10]})
    anns.append({"id": 91, "image_id": 101, "category_id": 42, "iscrowd": 0, "bbox": [0, 0, 10, 10]})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 9, "name": "dog"}, {"id": 5, "name": "cat"}]}))
    return path


def test_coco_gives_the_voc_labels(voc, tmp_path):
    source = _coco(voc, tmp_path / "coco")
    import_dataset("voc", voc, tmp_path / "from-voc", ImportOptions(val_fraction=0.25))
    report = import_dataset("coco", source, tmp_path / "from-coco", ImportOptions(val_fraction=0.25))
    assert _labels(tmp_path / "from-coco") == _labels(tmp_path / "from-voc") == LABELS
    assert report.names == ["cat", "dog"]  # category-id order
    assert report.counts() == {"iscrowd": 1, "unknown_class": 1}
    assert {i.file for i in report.issues} == {"sub/a.jpg", "sub/b.jpg"}
    assert _lists(tmp_path / "from-coco") == _lists(tmp_path / "from-voc")


def test_names_order_and_unknown_classes(voc, tmp_path):
    report = import_dataset("voc", voc, tmp_path / "out", ImportOptions(names=("dog",)))
    assert report.names == ["dog"] and report.boxes == {"dog": 2}
    assert report.counts() == {"unknown_class": 2}
    assert _labels(tmp_path / "out")["a"] == "0 0.500000 0.500000 1.000000 1.000000\n"


def test_vocdevkit_keeps_its_split_unless_a_fraction_is_given(tmp_path):
    devkit = _voc(tmp_path / "VOCdevkit" / "VOC2007", "JPEGImages", "Annotations")
    main_sets = devkit / "ImageSets" / "Main"
    main_sets.mkdir(parents=True)
    (main_sets / "trainval.txt").write_text("a\nb\nc\n")
    (main_sets / "test.txt").write_text("d\n")
    report = import_dataset("voc", devkit, tmp_path / "out")
    assert (report.train, report.valid) == (3, 1) and _lists(tmp_path / "out")[1] == ["images/d.jpg"]
    assert _labels(tmp_path / "out") == LABELS
    report = import_dataset("voc", devkit, tmp_path / "out2", ImportOptions(val_fraction=0.5))
    assert (report.train, report.valid) == (2, 2)
    (main_sets / "test.txt").write_text("")  # an image no list names is not imported
    report = import_dataset("voc", devkit, tmp_path / "out3")
    assert (report.train, report.valid) == (3, 0)


def test_yolo_round_trip(voc, tmp_path):
    import_dataset("voc", voc, tmp_path / "first", ImportOptions(val_fraction=0.5, seed=1))
    report = import_dataset("yolo", tmp_path / "first" / "first.data", tmp_path / "second")
    assert _labels(tmp_path / "second") == LABELS
    assert _lists(tmp_path / "second") == _lists(tmp_path / "first")  # the source's own split
    assert report.issues == [] and report.split == "the source's own split"


def test_ultralytics_yaml(voc, tmp_path):
    root = tmp_path / "ul"
    import_dataset("voc", voc, tmp_path / "darknet", ImportOptions(val_fraction=0))
    for name, *_ in IMAGES:
        split = "val" if name == "b.jpg" else "train"
        stem = Path(name).stem
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        (root / "images" / split / name).write_bytes((voc / "images" / name).read_bytes())
        (root / "labels" / split / f"{stem}.txt").write_text(LABELS[stem])
    (root / "labels" / "train" / "a.txt").write_text(LABELS["a"] + "7 0.5 0.5 0.1 0.1\n")  # class out of range
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: {0: cat, 1: dog}\n")
    report = import_dataset("yolo", root, tmp_path / "out")
    assert _labels(tmp_path / "out") == LABELS
    assert (report.train, report.valid) == (3, 1)
    assert [(i.file, i.reason) for i in report.issues] == [("labels/train/a.txt", "bad_box")]


def test_problems_are_reported_and_the_rest_imported(voc, tmp_path, monkeypatch):
    ann, img = voc / "annotations", voc / "images"
    _image(img / "e.jpg", 40, 30)
    (ann / "e.xml").write_text(_xml("e.jpg", None, [("cat", 1, 1, 20, 15)]))  # no <size>
    _image(img / "f.jpg", 40, 30)
    (ann / "f.xml").write_text(_xml("f.jpg", (40, 30), [("cat", -9, 1, 20, 30)]))  # outside: clipped
    _image(img / "g.jpg", 40, 30)
    (ann / "g.xml").write_text(_xml("g.jpg", (40, 30), [("cat", 30, 1, 20, 10), ("dog", 100, 1, 120, 10),
                                                         ("dog", 1, 1, 10, 10)]))  # inverted, outside, good
    (img / "h.jpg").write_text("this is not an image\n")
    (ann / "h.xml").write_text(_xml("h.jpg", (40, 30), [("cat", 1, 1, 10, 10)]))
    (img / "i.jpg").write_bytes(_jpeg_declaring(60000, 60000))
    (ann / "i.xml").write_text(_xml("i.jpg", (60000, 60000), [("cat", 1, 1, 10, 10)]))
    (ann / "j.xml").write_text(_xml("j.jpg", (40, 30), [("cat", 1, 1, 10, 10)]))  # no such image
    (ann / "k.xml").write_text("<annotation><filename>a.jpg</filename><object>")  # malformed
    _image(img / "l.jpg", 40, 30)
    (ann / "l.xml").write_text(_xml("l.jpg", (100, 100), [("dog", 1, 1, 40, 30)]))  # size disagrees
    decoded = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda data, flags: decoded.append(len(data)) or real(data, flags))

    report = import_dataset("voc", voc, tmp_path / "out", ImportOptions(val_fraction=0.25))
    found = {(i.file, i.reason) for i in report.issues}
    assert found == {("annotations/e.xml", "missing_size"), ("annotations/f.xml", "clipped"),
                     ("annotations/g.xml", "degenerate"), ("images/h.jpg", "bad_image"),
                     ("images/i.jpg", "bad_image"), ("annotations/j.xml", "missing_image"),
                     ("annotations/k.xml", "bad_annotation"), ("annotations/l.xml", "size_mismatch")}
    assert report.counts()["degenerate"] == 2
    assert len(decoded) == 4 + 4  # every usable image decoded once; neither the text file nor the bomb
    assert any("60000x60000" in i.detail for i in report.issues if i.file == "images/i.jpg")
    labels = _labels(tmp_path / "out")
    assert {k: labels[k] for k in LABELS} == LABELS
    assert labels["e"] == "0 0.250000 0.250000 0.500000 0.500000\n"
    assert labels["f"] == "0 0.250000 0.500000 0.500000 1.000000\n"
    assert labels["g"] == "1 0.125000 0.166667 0.250000 0.333333\n"
    assert labels["l"] == "1 0.500000 0.500000 1.000000 1.000000\n"
    assert (report.train + report.valid, sorted(labels)) == (8, ["a", "b", "c", "d", "e", "f", "g", "l"])
    assert main(["data", "check", str(tmp_path / "out")]) == 0


def test_duplicate_stems_are_renamed(tmp_path):
    root = tmp_path / "coco"
    for i, folder in enumerate(("x", "y")):
        _image(root / "images" / folder / "same.jpg", 20, 20, seed=i)
    doc = {"images": [{"id": 1, "file_name": "x/same.jpg"}, {"id": 2, "file_name": "y/same.jpg"}],
           "annotations": [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10]}],
           "categories": [{"id": 1, "name": "thing"}]}
    (root / "instances.json").write_text(json.dumps(doc))
    report = import_dataset("coco", root / "instances.json", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["same-1.jpg", "same.jpg"]
    assert [(i.file, i.reason) for i in report.issues] == [("y/same.jpg", "renamed")]
    assert _labels(tmp_path / "out") == {"same": "", "same-1": "0 0.250000 0.250000 0.500000 0.500000\n"}


def test_hostile_coco_paths_are_refused_inside_a_root(tmp_path):
    root = tmp_path / "tree"
    _image(root / "images" / "ok.jpg", 20, 20)
    (tmp_path / "secret.jpg").write_bytes((root / "images" / "ok.jpg").read_bytes())
    doc = {"images": [{"id": 1, "file_name": "ok.jpg"}, {"id": 2, "file_name": "../../secret.jpg"},
                      {"id": 3, "file_name": "/etc/hostname"}, {"id": 4, "file_name": "../../etc/passwd"}],
           "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    (root / "instances.json").write_text(json.dumps(doc))
    report = import_dataset("coco", root / "instances.json", tmp_path / "out", ImportOptions(root=root))
    assert report.train + report.valid == 1
    assert report.counts() == {"unsafe_path": 3}
    assert not any(str(tmp_path) in str(i) for i in report.issues)  # names relative to the root
    assert [p.name for p in (tmp_path / "out" / "images").iterdir()] == ["ok.jpg"]


def test_out_must_be_new_or_empty_and_nothing_usable_fails(voc, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(SlimYoloError, match="full: already exists and is not an empty folder"):
        import_dataset("voc", voc, tmp_path / "full")
    (tmp_path / "empty").mkdir()
    assert import_dataset("voc", voc, tmp_path / "empty").train == 3
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "images" / "a.jpg").write_text("text")
    (bad / "annotations").mkdir()
    (bad / "annotations" / "a.xml").write_text(_xml("a.jpg", (10, 10), [("cat", 1, 1, 5, 5)]))
    with pytest.raises(NothingImported):
        import_dataset("voc", bad, tmp_path / "never")
    assert not (tmp_path / "never").exists() and not list(tmp_path.glob(".never*"))
    capsys.readouterr()
    assert main(["data", "import", str(bad), "--format", "voc", "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert "no usable image" in err and "images/a.jpg" in err


def test_cli_json(voc, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["data", "import", str(voc), "--format", "voc", "--out", str(out), "--val-fraction", "0.5",
                 "--seed", "2", "--names", "dog,cat", "--name", "pets", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["names"] == ["dog", "cat"] and doc["images"] == {"train": 2, "valid": 2}
    assert doc["boxes"] == {"dog": 2, "cat": 2} and doc["issues"] == []
    assert doc["data_file"] == str(out / "pets.data") and (out / "pets.names").read_text() == "dog\ncat\n"
    assert main(["data", "import", str(voc), "--format", "voc", "--out", str(tmp_path / "o2")]) == 0
    text = capsys.readouterr().out
    assert "imported 4 images" in text and "3 training and 1 validation" in text


def test_pipeline_config_import(voc, tmp_path, monkeypatch):
    from slimyolo.pipeline.config import PipelineConfig
    from slimyolo.pipeline.run import prepare_data

    doc = {"name": "mine", "model": "yolov4-tiny", "img_size": 64,
           "data": {"import": {"format": "voc", "source": "voc", "val_fraction": 0.25, "seed": 0,
                               "names": ["cat", "dog"], "skip_difficult": False}}}
    monkeypatch.chdir(tmp_path)  # a relative source is relative to the working directory
    config = PipelineConfig.from_dict(doc)
    said: list[str] = []
    folder, data_file = prepare_data(config, tmp_path / "run", said.append)
    assert data_file == folder / "mine.data" and _labels(folder) == LABELS
    assert any("imported 4 images" in s for s in said)
    first = {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    prepare_data(config, tmp_path / "run", said.append)  # a continued run: the same bytes
    assert {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} == first
    bad = {**doc, "data": {"import": {"format": "voc", "source": "voc", "val_frac": 0.2}}}
    with pytest.raises(SlimYoloError, match="val_frac"):
        PipelineConfig.from_dict(bad)
    with pytest.raises(SlimYoloError, match="format"):
        PipelineConfig.from_dict({**doc, "data": {"import": {"format": "pascal", "source": "voc"}}})


def test_stage_spec_import_and_a_hostile_tree(tmp_path):
    from slimyolo.params import data_ref, plain
    from slimyolo.stages.kinds import parse_spec
    from slimyolo.stages.workspace import WorkConfig, Workspace
    from slimyolo.store import LocalStore

    doc = {"import": {"format": "coco", "source": "uploads/mine", "file": "instances.json", "val_fraction": 0.5,
                      "seed": 1, "names": ["thing"]}}
    ref = data_ref(doc, "data")
    assert ref.imported is not None and ref.imported.file == "instances.json"
    assert data_ref(plain(ref), "data") == ref and data_ref(ref, "data") == ref
    spec = parse_spec("eval", {"weights": "runs/x/best.pt", "data": doc})
    assert parse_spec("eval", spec.to_dict()) == spec
    for bad, match in (({"import": {**doc["import"], "file": "../x.json"}}, "file"),
                       ({"import": {**doc["import"], "colour": 1}}, "colour"),
                       ({"import": doc["import"], "tree": "a/b"}, "tree")):
        with pytest.raises(SlimYoloError, match=match):
            data_ref(bad, "data")

    upload = tmp_path / "upload"
    _image(upload / "images" / "ok.jpg", 20, 20)
    _image(upload / "images" / "two.jpg", 20, 20, seed=1)
    (upload / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "ok.jpg"}, {"id": 2, "file_name": "two.jpg"},
                   {"id": 3, "file_name": "../../../../etc/passwd"}, {"id": 4, "file_name": "/etc/passwd"}],
        "annotations": [{"image_id": 1, "category_id": 7, "bbox": [2, 2, 10, 10]}],
        "categories": [{"id": 7, "name": "thing"}]}))
    store = LocalStore(tmp_path / "store")
    store.put_tree("uploads/mine", upload)
    with Workspace(store, WorkConfig(work_dir=str(tmp_path / "work"))) as ws:
        data_file = ws.data(ref, "data")
        spec = read_data_file(data_file, root=data_file.parent)
        assert (len(spec.train), len(spec.valid)) == (1, 1) and spec.names == ["thing"]
    empty = data_ref({"import": {"format": "coco", "source": "uploads/hostile"}}, "data")
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    (hostile / "instances.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "/etc/hostname"}],
                                                        "annotations": [], "categories": []}))
    store.put_tree("uploads/hostile", hostile)
    with pytest.raises(SlimYoloError, match=r"^data\.import: .*no usable image") as info, \
            Workspace(store, WorkConfig(work_dir=str(tmp_path / "work"))) as ws:
        ws.data(empty, "data")
    assert str(tmp_path / "work") not in str(info.value)
