"""A conversion's default model name and what it says about the model's versions.

`convert --weights runs/ft/best.pt` without `--name` named every run's model `best`, and an FP32
then an INT8 conversion under one name became versions 1 and 2, the server silently serving the
INT8 one. The name now comes from the run folder, and the CLI says which version is the newest
(the served one) and warns when the versions of one name hold different precisions.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import mini_cfg

from slimyolo.cli import main
from slimyolo.convert.conversion import convert, default_name, model_versions, versions_report
from slimyolo.darknet.cfg import parse_cfg_text
from slimyolo.darknet.model import load_model
from slimyolo.darknet.weights import save_checkpoint
from slimyolo.errors import SlimYoloError


def _version(model_dir: Path, version: str, precision: str | None) -> Path:
    folder = model_dir / version
    folder.mkdir(parents=True)
    if precision is not None:
        (folder / "conversion.json").write_text(json.dumps({"precision": precision}))
    return folder


def test_default_name_of_a_run_checkpoint_is_its_run_folder(tmp_path):
    assert default_name("runs/ft/best.pt") == "ft"
    assert default_name(Path("runs/sparse/last.pt")) == "sparse"
    assert default_name("runs/pruned/pruned.pt") == "pruned"
    assert default_name("models/yolov4-2c.cfg") == "yolov4-2c"
    assert default_name(tmp_path / "my run" / "best.pt") == "best"  # not a valid name: the stem


def test_convert_without_a_name_uses_the_run_folder(tmp_path):
    run = tmp_path / "runs" / "ft"
    run.mkdir(parents=True)
    save_checkpoint(load_model(parse_cfg_text(mini_cfg(64), "m.cfg")), run / "best.pt")
    for name in ("ft", "best"):  # "best": the old default fails as fast, with the wrong folder
        (tmp_path / "models" / name / "1").mkdir(parents=True)
    # The name is chosen before anything slow: an existing version proves which one it is.
    with pytest.raises(SlimYoloError, match=r"models/ft/1 already exists"):
        convert(None, run / "best.pt", tmp_path / "models", version=1)


def test_versions_report_names_the_served_version_and_warns_on_mixed_precisions(tmp_path):
    model = tmp_path / "models" / "ft"
    _version(model, "1", "fp32")
    line, warning = versions_report(model)
    assert line == "model ft: versions 1 (fp32); a server serves the newest: 1 (fp32)"
    assert warning is None
    _version(model, "2", "fp32")
    assert versions_report(model)[1] is None  # one precision: nothing to warn about
    _version(model, "10", "int8")
    _version(model, "junk", None)  # not a number: below every numbered version, as the server orders them
    assert model_versions(model) == [("junk", None), ("1", "fp32"), ("2", "fp32"), ("10", "int8")]
    line, warning = versions_report(model)
    assert line.endswith("a server serves the newest: 10 (int8)") and "junk (precision unknown)" in line
    assert warning is not None and "serves only the newest, 10 (int8)" in warning
    assert "fp32 version is no longer served" in warning and "--name ft-int8" in warning


def test_convert_cli_prints_the_versions_and_the_warning(tmp_path, monkeypatch, capsys):
    import slimyolo.convert.conversion as conversion

    model = tmp_path / "models" / "detector"
    _version(model, "1", "fp32")

    def fake_convert(cfg, weights, out, options, *, name, version, **kw):
        path = _version(Path(out) / name, "2", options.precision)
        parity = SimpleNamespace(images=1, image_source="synthetic", tolerance=1e-3, lines=lambda: [])
        return SimpleNamespace(path=path, precision=options.precision, via="tf", parity=parity,
                               summary={"seconds": {"total": 1.0}})

    monkeypatch.setattr(conversion, "convert", fake_convert)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    assert main(["convert", "--weights", str(weights), "--out", str(tmp_path / "models"), "--name", "detector",
                 "--precision", "int8"]) == 0
    out, err = capsys.readouterr()
    assert "model detector: versions 1 (fp32), 2 (int8); a server serves the newest: 2 (int8)" in out
    assert "warning: model detector now holds fp32 and int8 versions" in err and "--name detector-int8" in err
