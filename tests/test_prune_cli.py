"""`slimyolo prune channel|layer|both`: the files it writes reload (in SlimYOLO and OpenCV) to
the pruned model's outputs, the summary matches a recount from the written cfg, and bad
arguments are clear errors that write nothing."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from test_prune_exact import mini_res_cfg

from slimyolo.darknet import load_model, make_cfg, model_stats, parse_cfg
from slimyolo.darknet.init import init_random_weights, sparsify_gammas
from slimyolo.darknet.weights import checkpoint_cfg


def sparse_model(cfg, seed: int = 0):
    """Random weights whose |γ| follow a sparse mixture: 80% near 0, the rest log-uniform."""
    return sparsify_gammas(init_random_weights(load_model(cfg), seed), 0.8, seed)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """cfg + .weights of a sparse yolov4-tiny (route groups) and of the mini residual net."""
    tmp_path = tmp_path_factory.mktemp("models")
    out = {}
    for name, cfg in (("tiny", make_cfg("yolov4-tiny", 2, 128)), ("res", mini_res_cfg())):
        cfg.write(tmp_path / f"{name}.cfg")
        sparse_model(cfg).save_darknet_weights(tmp_path / f"{name}.weights")
        out[name] = (tmp_path / f"{name}.cfg", tmp_path / f"{name}.weights")
    return out


def heads(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("method,model,extra", [
    ("channel", "tiny", ["--global-percent", "0.7", "--round-to", "4"]),
    ("layer", "res", ["--shortcuts", "3"]),
    ("both", "res", ["--global-percent", "0.6", "--shortcuts", "2", "--layer-keep", "0.25"]),
])
def test_written_files_reload_and_match_the_summary(run_cli, files, tmp_path, method, model, extra):
    cfg, weights = files[model]
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("prune", method, "--cfg", cfg, "--weights", weights, "--out", out, *extra)
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["pruned.cfg", "pruned.pt", "pruned.weights", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method
    assert f"{summary['after']['params']:,}" in stdout

    # (4) the reported figures are a recount of the written cfg and files
    written = parse_cfg(out / "pruned.cfg")
    assert summary["after"] == model_stats(written).as_dict()
    assert summary["before"] == model_stats(parse_cfg(cfg)).as_dict()
    assert summary["after"]["weights_bytes"] == (out / "pruned.weights").stat().st_size
    from_weights = load_model(written, out / "pruned.weights")
    assert summary["after"]["params"] == sum(p.numel() for p in from_weights.parameters())
    assert summary["after"]["params"] < summary["before"]["params"]
    kept = {row["layer"]: row["kept"] for row in summary["channels"]}
    assert [kept[i] for i in sorted(kept) if kept[i]] == [b.conv.out_channels for _, b in from_weights.conv_blocks()]

    # (3) cfg + .weights, cfg + .pt and the .pt alone give identical outputs
    x = torch.rand(2, 3, *from_weights.input_size, generator=torch.Generator().manual_seed(0))
    ref = heads(from_weights, x)
    for other in (load_model(written, out / "pruned.pt"), load_model(checkpoint_cfg(out / "pruned.pt"),
                                                                     out / "pruned.pt")):
        for a, b in zip(ref, heads(other, x), strict=True):
            assert torch.equal(a, b)

    # any darknet reader: OpenCV's importer computes the same heads (at its BN epsilon, 1e-6)
    net = cv2.dnn.readNetFromDarknet(str(out / "pruned.cfg"), str(out / "pruned.weights"))
    net.setInput(x[:1].numpy())
    theirs = net.forward([f"conv_{h.layer - 1}" for h in from_weights.heads])
    for m in from_weights.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-6
    for a, b in zip(heads(from_weights, x[:1]), theirs, strict=True):
        assert a.shape == b.shape
        assert np.abs(a.numpy() - b).max() <= 3e-3 * float(a.abs().max())


def test_json_output_and_pt_input_without_cfg(run_cli, files, tmp_path):
    cfg, weights = files["res"]
    model = load_model(cfg, weights)
    from slimyolo.darknet.weights import save_checkpoint

    save_checkpoint(model, tmp_path / "res.pt")
    code, stdout, _ = run_cli("prune", "layer", "--weights", tmp_path / "res.pt", "--shortcuts", "1",
                              "--out", tmp_path / "o", "--json")
    assert code == 0
    summary = json.loads(stdout)
    assert summary["after"]["layers"] == 29 - 3
    assert len(summary["removed_units"]) == 1


@pytest.mark.parametrize("args,message", [
    (["channel", "--global-percent", "0"], "--global-percent must be above 0, got 0.0"),
    (["channel", "--global-percent", "1"], "--global-percent must be below 1, got 1.0"),
    (["both", "--global-percent", "1.5", "--shortcuts", "1"], "--global-percent must be below 1, got 1.5"),
    (["channel", "--global-percent", "0.5", "--layer-keep", "2"], "--layer-keep must be at most 1, got 2.0"),
    (["channel", "--global-percent", "0.5", "--round-to", "0"], "--round-to must be at least 1, got 0"),
    (["layer", "--shortcuts", "6"], "cannot remove 6 residual units: the model has 5 that can be removed "
                                    "(shortcut layers 4, 7, 10, 14, 17)"),
    (["layer", "--shortcuts", "-1"], "--shortcuts must be at least 0, got -1"),
    (["layer", "--shortcuts", "0"], "--shortcuts (residual units to remove) must be at least 1 for layer pruning"),
    (["both", "--global-percent", "0.5", "--shortcuts", "9"], "cannot remove 9 residual units"),
])
def test_bad_arguments_are_clear_errors_that_write_nothing(run_cli, files, tmp_path, args, message):
    cfg, weights = files["res"]
    code, _, stderr = run_cli("prune", args[0], "--cfg", cfg, "--weights", weights, "--out", tmp_path / "out",
                              *args[1:])
    assert code == 2
    assert stderr.startswith("slimyolo: error: ")
    assert message in stderr
    assert list(tmp_path.iterdir()) == []


def test_weights_of_another_cfg_and_a_used_out_dir(run_cli, files, tmp_path):
    code, _, stderr = run_cli("prune", "channel", "--cfg", files["res"][0], "--weights", files["tiny"][1],
                              "--global-percent", "0.5", "--out", tmp_path / "out")
    assert code == 2
    assert f"{files['tiny'][1]}: the file is too long for this cfg" in stderr
    assert list(tmp_path.iterdir()) == []
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    code, _, stderr = run_cli("prune", "layer", "--cfg", files["res"][0], "--weights", files["res"][1],
                              "--shortcuts", "1", "--out", used)
    assert code == 2
    assert "the output folder exists and is not empty" in stderr
    assert [p.name for p in used.iterdir()] == ["keep.txt"]
