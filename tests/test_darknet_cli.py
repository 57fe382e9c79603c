"""``slimyolo zoo``, ``info`` and ``init`` as a user runs them."""

from __future__ import annotations

import json

from slimyolo.darknet import make_cfg, parse_cfg


def test_zoo_info_init(run_cli, tmp_path):
    cfg_path = tmp_path / "y4t.cfg"
    code, _, err = run_cli("zoo", "yolov4-tiny", "--classes", "3", "--size", "320x256", "--out", cfg_path)
    assert code == 0 and "38 layers" in err
    assert parse_cfg(cfg_path) == make_cfg("yolov4-tiny", 3, "320x256")

    code, out, _ = run_cli("info", cfg_path, "--json")
    info = json.loads(out)
    assert code == 0
    # 6,056,606 params at 80 classes; each head has 255 - 24 = 231 fewer filters here.
    assert info["layers"] == 38 and info["params"] == 6_056_606 - 231 * (513 + 257)
    assert info["input_size"] == [256, 320]
    assert [h["stride"] for h in info["heads"]] == [32, 16]
    assert info["heads"][0]["shape"] == [24, 8, 10]

    weights = tmp_path / "y4t.weights"
    code, _, err = run_cli("init", cfg_path, "--out", weights, "--seed", "3")
    assert code == 0 and weights.stat().st_size == info["weights_bytes"]
    code, out, _ = run_cli("info", cfg_path, "--weights", weights, "--layers", "--size", "416")
    assert code == 0 and out.splitlines()[-1].endswith("6.790 BFLOPs, 101.2 MB of activation traffic (f32), "
                                                      f"23,539,796 bytes of .weights, input 416x416; {weights} fits")
    assert "route 2" in out and "416x416x3" in out


def test_zoo_to_stdout_and_errors(run_cli, tmp_path):
    code, out, _ = run_cli("zoo", "yolov3-tiny", "--classes", "1")
    assert code == 0 and out.startswith("[net]") and "filters=18" in out

    bad = tmp_path / "bad.cfg"
    bad.write_text("[net]\nwidth=64\nheight=64\n[convolutional]\nfilters=two\n")
    code, _, err = run_cli("info", bad)
    assert code == 2
    assert err.strip() == f"slimyolo: error: {bad}:5: layer 0 [convolutional]: bad number 'two' for 'filters'"

    cfg_path = tmp_path / "m.cfg"
    make_cfg("yolov3-tiny", 2, 64).write(cfg_path)
    (tmp_path / "short.weights").write_bytes(b"\0" * 100)
    code, _, err = run_cli("info", cfg_path, "--weights", tmp_path / "short.weights")
    assert code == 2 and "got 100 bytes" in err


def test_init_sparse_gives_the_stated_gamma_distribution(run_cli, tmp_path):
    import numpy as np

    from slimyolo.darknet import load_model

    cfg_path = tmp_path / "m.cfg"
    make_cfg("yolov3-tiny", 2, 64).write(cfg_path)
    code, _, _ = run_cli("init", cfg_path, "--out", tmp_path / "m.weights", "--sparse", "0.7", "--seed", "1")
    assert code == 0
    model = load_model(cfg_path, tmp_path / "m.weights")
    gammas = np.concatenate([b.bn.weight.detach().abs().numpy() for _, b in model.conv_blocks() if b.bn is not None])
    near_zero = gammas < 1e-3
    assert abs(near_zero.mean() - 0.7) < 0.03
    assert gammas[~near_zero].min() >= 0.05 and gammas.max() <= 1.5
    code, _, err = run_cli("init", cfg_path, "--out", tmp_path / "x.weights", "--sparse", "2")
    assert code == 2 and "--sparse is a fraction" in err


# conv A → conv B → shortcut(A + B) → head → yolo at 16x16: A is written once and read by B and
# the shortcut, B and the shortcut once each, the head by the yolo layer (as the decode reads it),
# which writes nothing; the image is read by A.
SHORTCUT_CFG = """[net]
width=16
height=16
channels=3
[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky
[shortcut]
from=-2
activation=linear
[convolutional]
filters=21
size=1
stride=1
pad=1
activation=linear
[yolo]
mask=0,1,2
anchors=2,3,4,5,6,7
classes=2
num=3
"""


def test_info_activation_traffic(run_cli, tmp_path):
    cfg_path = tmp_path / "s.cfg"
    cfg_path.write_text(SHORTCUT_CFG)
    plane = 4 * 16 * 16  # one f32 channel
    expected = [8 * plane * 3 + 3 * plane, 8 * plane * 2, 8 * plane * 2, 21 * plane * 2, 0]
    code, out, _ = run_cli("info", cfg_path, "--json", "--layers")
    assert code == 0
    info = json.loads(out)
    assert info["activation_mb"] == round(sum(expected) / 1e6, 3)
    assert [round(r["activation_mb"] * 1e6) for r in info["layers"]] == expected
    assert [r["kind"] for r in info["layers"]] == ["conv", "conv", "shortcut", "conv", "yolo"]
    code, out, _ = run_cli("info", cfg_path, "--layers", "--size", "32")
    assert code == 0
    assert out.splitlines()[0].split()[-3:] == ["BFLOPs", "act", "MB"]  # the per-layer column
    assert f"{4 * sum(expected) / 1e6:.1f} MB of activation traffic" in out.splitlines()[-1]  # 4x the pixels


def test_the_readme_shows_what_zoo_and_info_print(run_cli, tmp_path, monkeypatch):
    """The README's first example: each command followed by its output as `# ...` lines, exactly."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split(".venv/bin/slimyolo zoo yolov4 --classes 2", 1)[1].split("```", 1)[0]
    lines = (".venv/bin/slimyolo zoo yolov4 --classes 2" + block).strip().splitlines()
    shown: list[tuple[list[str], list[str]]] = []
    for line in lines:
        if line.startswith(".venv/bin/slimyolo "):
            shown.append((line.split()[1:], []))
        else:
            assert line.startswith("# "), line
            shown[-1][1].append(line[2:])
    assert [args[0] for args, _ in shown] == ["zoo", "info"]
    monkeypatch.chdir(tmp_path)
    for args, output in shown:
        code, out, err = run_cli(*args)
        assert code == 0 and (out + err).splitlines() == output, (args, out, err)
