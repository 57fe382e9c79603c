"""darknet's pretrained weights: partial files (``slimyolo partial``), another cfg's weights, ``init --weights``.

The models are the zoo's yolov4-tiny at 128 px with random weights: an 80-class "COCO" model whose
file is cut into a ``yolov4-tiny.conv.29``, and the 1-class model a user trains from either. The
1-class model's backbone must compute what the 80-class one computes, in PyTorch and in another
darknet reader (OpenCV's importer).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from slimyolo.darknet.init import init_random_weights
from slimyolo.darknet.model import Darknet, load_model
from slimyolo.darknet.weights import load_pretrained, save_checkpoint
from slimyolo.darknet.zoo import make_cfg
from slimyolo.errors import SlimYoloError, WeightsError
from slimyolo.train.config import CONTINUES_A_TRAINED_MODEL

SIZE = 128
HEADS = (29, 36)  # the convolutions feeding yolov4-tiny's [yolo] layers
# OpenCV names a darknet convolution's activation leaky_<index + 1>: the outputs of layers 27 and 28
# (the backbone's last convolutions: the first head's input and the route of the second) and 35.
CV_BACKBONE = ("leaky_28", "leaky_29", "leaky_36")
PARTIAL_LINE = "loaded 17 of 21 convolutions from {} (4 re-initialised: layers 29, 32, 35, 36)"
OTHER_CFG_LINE = "loaded 19 of 21 convolutions from {} (2 re-initialised: layers 29, 36)"


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """Files of an 80-class yolov4-tiny (cfg, weights, its conv.29 partial file, a .pt) and the 1-class cfg."""
    from slimyolo.cli import main

    root = tmp_path_factory.mktemp("pretrained")
    files = {"cfg80": root / "yolov4-tiny.cfg", "cfg1": root / "one-class.cfg",
             "weights80": root / "yolov4-tiny.weights", "partial": root / "yolov4-tiny.conv.29",
             "pt80": root / "yolov4-tiny.pt"}
    make_cfg("yolov4-tiny", 80, SIZE).write(files["cfg80"])
    make_cfg("yolov4-tiny", 1, SIZE).write(files["cfg1"])
    model = init_random_weights(Darknet(make_cfg("yolov4-tiny", 80, SIZE)), seed=3)
    model.header = (0, 2, 5, 32013312, 8)  # a trained file's header: `seen` images
    model.save_darknet_weights(files["weights80"])
    save_checkpoint(model, files["pt80"])
    assert main(["partial", str(files["cfg80"]), str(files["weights80"]), str(files["partial"]), "29"]) == 0
    return files


def _floats(model: Darknet, layers: int) -> int:
    """The float32 values darknet stores for the convolutions among layers 0..layers-1."""
    return sum(b.conv.weight.numel() + b.conv.out_channels * (4 if b.bn is not None else 1)
               for i, b in model.conv_blocks() if i < layers)


def _conv_outputs(model: Darknet, layers: tuple[int, ...], seed: int = 0) -> dict[int, torch.Tensor]:
    """The outputs of the convolutions ``layers`` on a fixed random image."""
    out: dict[int, torch.Tensor] = {}
    hooks = [model.module_list[i].register_forward_hook(lambda _m, _i, o, i=i: out.__setitem__(i, o))
             for i in layers]
    x = torch.rand((1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return out


def _opencv_outputs(cfg: Path, weights: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    cv2 = pytest.importorskip("cv2")
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    image = (np.random.default_rng(0).random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
    net.setInput(cv2.dnn.blobFromImage(image, 1 / 255.0, (SIZE, SIZE), swapRB=True, crop=False))
    return dict(zip(names, net.forward(list(names)), strict=True))


def test_partial_is_the_start_of_the_full_file_with_its_header(coco, run_cli, tmp_path):
    full, part = coco["weights80"].read_bytes(), coco["partial"].read_bytes()
    assert len(part) == 20 + 4 * _floats(Darknet(make_cfg("yolov4-tiny", 80, SIZE)), 29) < len(full)
    assert full[:len(part)] == part
    assert struct.unpack_from("<3iq", part) == (0, 2, 5, 32013312)
    code, _, err = run_cli("partial", coco["cfg80"], coco["pt80"], tmp_path / "from-pt.conv.29", "29")
    assert code == 0 and "the 17 convolutions among layers 0..28" in err
    assert (tmp_path / "from-pt.conv.29").read_bytes() == part  # a .pt gives the same bytes
    code, _, err = run_cli("partial", coco["cfg80"], coco["partial"], tmp_path / "x", "37")
    assert code == 2 and "holds no weights for layer 29" in err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("source", ["partial", "other cfg"])
def test_init_from_darknet_weights_keeps_the_backbone_exactly(coco, run_cli, tmp_path, source):
    out = tmp_path / "one-class.weights"
    args = ["--weights", coco["partial"]] if source == "partial" else \
        ["--weights", coco["weights80"], "--weights-cfg", coco["cfg80"]]
    code, _, err = run_cli("init", coco["cfg1"], "--out", out, "--seed", "5", *args)
    assert code == 0, err
    line = (PARTIAL_LINE.format(coco["partial"]) if source == "partial"
            else OTHER_CFG_LINE.format(coco["weights80"]))
    assert err.splitlines()[0] == line
    assert out.stat().st_size == 20 + 4 * _floats(Darknet(make_cfg("yolov4-tiny", 1, SIZE)), 99)  # a full file

    # PyTorch: the backbone computes exactly what the 80-class model's computes; the heads are new and 1-class.
    one, coco_model = load_model(coco["cfg1"], out), load_model(coco["cfg80"], coco["weights80"])
    assert one.header == coco_model.header  # the pretrained file's header (and `seen`) is kept
    kept = (26, 27, 28) + ((32, 35) if source == "other cfg" else ())
    mine, theirs = _conv_outputs(one, kept + HEADS), _conv_outputs(coco_model, kept + HEADS)
    for i in kept:
        torch.testing.assert_close(mine[i], theirs[i], rtol=0, atol=0)
    for i in HEADS:
        assert mine[i].shape[1] == 3 * (5 + 1) and theirs[i].shape[1] == 3 * (5 + 80)
    assert [tuple(h.shape) for h in one(torch.rand(1, 3, SIZE, SIZE))] == [(1, 18, 4, 4), (1, 18, 8, 8)]

    # Another reader of darknet files: OpenCV's importer sees the same backbone in the written file.
    a = _opencv_outputs(coco["cfg1"], out, (*CV_BACKBONE, "conv_29"))
    b = _opencv_outputs(coco["cfg80"], coco["weights80"], (*CV_BACKBONE, "conv_29"))
    names = CV_BACKBONE if source == "other cfg" else CV_BACKBONE[:2]
    for name in names:
        scale = float(np.abs(b[name]).max())
        assert scale > 0
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-4 * scale, err_msg=name)
    assert a["conv_29"].shape[1] == 18 and b["conv_29"].shape[1] == 255


def test_the_full_file_of_the_cfg_loads_whole_and_a_checkpoint_of_another_cfg_transfers(coco):
    model = Darknet(make_cfg("yolov4-tiny", 80, SIZE))
    report = load_pretrained(model, coco["weights80"])
    assert report.kind == "full" and report.complete
    assert report.line() == f"loaded 21 of 21 convolutions from {coco['weights80']}"
    reference = load_model(coco["cfg80"], coco["weights80"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values(),
                                                   strict=True))
    report = load_pretrained(Darknet(make_cfg("yolov4-tiny", 1, SIZE)), coco["pt80"])
    assert report.line() == OTHER_CFG_LINE.format(coco["pt80"]) and report.kind == "other cfg"
    report = load_pretrained(Darknet(make_cfg("yolov4-tiny", 1, SIZE)), coco["weights80"], "yolov4-tiny")
    assert report.line() == OTHER_CFG_LINE.format(coco["weights80"])  # a zoo name: its 80-class cfg


def _unchanged(model: Darknet, call) -> str:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError) as err:
        call(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "a bad file changed the model"
    return str(err.value)


def test_bad_files_are_errors_that_leave_the_model_unchanged(coco, tmp_path):
    one = Darknet(make_cfg("yolov4-tiny", 1, SIZE))
    part = coco["partial"].read_bytes()
    cut = tmp_path / "cut.conv.29"
    cut.write_bytes(part[:-100])
    msg = _unchanged(one, lambda m: load_pretrained(m, cut))
    assert msg.startswith(f"{cut}: the file ends inside layer 28 (a convolution)") and str(len(part) - 100) in msg
    # the cfg's own file, truncated mid-layer: still an error
    truncated = tmp_path / "truncated.weights"
    truncated.write_bytes(coco["weights80"].read_bytes()[:-10])
    msg = _unchanged(Darknet(make_cfg("yolov4-tiny", 80, SIZE)), lambda m: load_pretrained(m, truncated))
    assert "ends inside layer 36" in msg
    # another class count without its cfg: say to pass it
    msg = _unchanged(one, lambda m: load_pretrained(m, coco["weights80"]))
    assert "too long for this cfg" in msg and "--weights-cfg" in msg
    # NaN
    nan = bytearray(part)
    nan[-4:] = struct.pack("<f", float("nan"))
    (tmp_path / "nan.conv.29").write_bytes(bytes(nan))
    assert "NaN" in _unchanged(one, lambda m: load_pretrained(m, tmp_path / "nan.conv.29"))
    # another cfg whose convolutions match nowhere: an error, not a silently random model
    narrow = tmp_path / "narrow.cfg"
    make_cfg("yolov4-tiny", 80, SIZE, width=0.5).write(narrow)
    narrow_weights = tmp_path / "narrow.weights"
    init_random_weights(load_model(narrow), 1).save_darknet_weights(narrow_weights)
    msg = _unchanged(one, lambda m: load_pretrained(m, narrow_weights, narrow))
    assert "no convolution of" in msg and "nothing would load" in msg
    # the header only
    (tmp_path / "empty.weights").write_bytes(part[:20])
    assert "holds no convolution weights" in _unchanged(one, lambda m: load_pretrained(m, tmp_path / "empty.weights"))


def test_init_names_the_file_and_layer_of_a_partial_file_cut_mid_layer(coco, run_cli, tmp_path):
    cut = tmp_path / "cut.conv.29"
    cut.write_bytes(coco["partial"].read_bytes()[:-7])
    code, _, err = run_cli("init", coco["cfg1"], "--out", tmp_path / "x.weights", "--weights", cut)
    assert code == 2 and f"{cut}: the file ends inside layer 28" in err and not (tmp_path / "x.weights").exists()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from slimyolo.data.synth import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("data") / "synth", classes=1, train=8, val=4, size=64, seed=0)


TRAIN = ("--epochs", "1", "--batch-size", "4", "--img-size", "64", "--max-eval-images", "4", "--threads", "1",
         "--workers", "0", "--quiet")


@pytest.mark.parametrize(("weights", "extra"), [
    ("partial", ("-sr",)), ("partial", ("--finetune",)), ("pt80", ("-sr",)),
    ("weights80", ("--finetune", "--weights-cfg", "cfg80")), ("weights80", ("-sr",)),
])
def test_sparsity_training_and_fine_tuning_refuse_partial_and_other_cfg_weights(coco, tiny_data, run_cli, tmp_path,
                                                                               weights, extra):
    extra = tuple(str(coco[e]) if e in coco else e for e in extra)
    code, _, err = run_cli("train", "--cfg", coco["cfg1"], "--data", tiny_data, "--weights", coco[weights],
                           *TRAIN, "--out", tmp_path / "run", *extra)
    assert code == 2 and CONTINUES_A_TRAINED_MODEL in err, err
    assert not (tmp_path / "run").exists()


def test_the_train_spec_takes_weights_cfg_for_base_training_only():
    from slimyolo.stages.kinds import parse_spec

    doc = {"data": {"tree": "d"}, "out": "runs/t", "cfg": "in/one.cfg", "weights": "in/yolov4-tiny.weights",
           "weights_cfg": "in/yolov4-tiny.cfg"}
    assert parse_spec("train", doc).weights_cfg is not None
    with pytest.raises(SlimYoloError, match="is for base training only: sparsity training and fine-tuning"):
        parse_spec("train", {**doc, "sr": True})
    with pytest.raises(SlimYoloError, match="'weights_cfg' is the cfg of 'weights'; it needs weights"):
        parse_spec("train", {k: v for k, v in doc.items() if k != "weights"})


def test_base_training_starts_from_a_partial_file_and_records_it(coco, tiny_data, run_cli, tmp_path):
    from slimyolo.train.config import TrainConfig

    run = tmp_path / "run"
    code, _, err = run_cli("train", "--cfg", coco["cfg1"], "--data", tiny_data, "--weights", coco["partial"],
                           *TRAIN, "--out", run)
    assert code == 0, err
    doc = yaml.safe_load((run / "config.yaml").read_text())
    assert doc["pretrained"]["report"] == PARTIAL_LINE.format(coco["partial"])
    assert doc["pretrained"]["kind"] == "partial" and doc["pretrained"]["reinitialised_layers"] == [29, 32, 35, 36]
    assert TrainConfig.from_yaml(run / "config.yaml").weights == str(coco["partial"])  # still a config to repeat


def test_the_train_stage_fetches_weights_cfg_and_publishes_the_record(coco, tiny_data, tmp_path):
    import urllib.parse

    from slimyolo.stages.kinds import parse_spec, run_stage
    from slimyolo.store import LocalStore

    store = LocalStore(tmp_path / "store")
    store.put_tree("inputs/synth", tiny_data.parent)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("cfg1", "cfg80", "weights80"):
        (inputs / coco[name].name).write_bytes(coco[name].read_bytes())
    store.put_tree("inputs/models", inputs)
    spec = parse_spec("train", {"data": "inputs/synth", "out": "runs/base", "cfg": "inputs/models/one-class.cfg",
                                "weights": "inputs/models/yolov4-tiny.weights",
                                "weights_cfg": "inputs/models/yolov4-tiny.cfg", "epochs": 1, "batch_size": 4,
                                "img_size": 64, "max_eval_images": 4, "threads": 1})
    result = run_stage(store, spec)
    config = yaml.safe_load(Path(urllib.parse.urlparse(result.artifacts["config"].uri).path).read_text())
    assert config["pretrained"]["kind"] == "other cfg"
    assert config["pretrained"]["report"].startswith("loaded 19 of 21 convolutions from ")
    assert config["pretrained"]["reinitialised_layers"] == list(HEADS)


def test_the_pipeline_config_takes_pretrained_weights_for_its_base_training(coco):
    from slimyolo.pipeline.config import PipelineConfig

    doc = {"name": "p", "data": {"synth": {"classes": 1}}, "model": "yolov4-tiny", "img_size": 64}
    config = PipelineConfig.from_dict({**doc, "weights": str(coco["weights80"]), "weights_cfg": str(coco["cfg80"])},
                                      "p.yaml")
    assert (config.weights, config.weights_cfg) == (str(coco["weights80"]), str(coco["cfg80"]))
    with pytest.raises(SlimYoloError, match="'weights_cfg' is the cfg of 'weights'; it needs weights"):
        PipelineConfig.from_dict({**doc, "weights_cfg": str(coco["cfg80"])}, "p.yaml")
    with pytest.raises(SlimYoloError, match="'weights': no such file"):
        PipelineConfig.from_dict({**doc, "weights": "missing.conv.29"}, "p.yaml")
