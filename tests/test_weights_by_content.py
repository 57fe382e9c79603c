"""Checkpoints and darknet .weights are told apart by content, never by their file names.

A checkpoint saved as ``x.weights`` and a darknet weights file named ``x.pt`` go through every
place that decides the format: ``is_checkpoint``, the stage workspace's rename, the stage's
"no cfg without a checkpoint" rule, the training config's check and the trainer's cfg lookup.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from slimyolo.darknet import load_model, parse_cfg_text
from slimyolo.darknet.init import init_random_weights
from slimyolo.darknet.weights import is_checkpoint, load_weights, save_checkpoint
from slimyolo.errors import SlimYoloError, WeightsError
from slimyolo.stages.runners import _model_inputs
from slimyolo.stages.workspace import WorkConfig, Workspace
from slimyolo.store import LocalStore
from slimyolo.train.config import TrainConfig
from slimyolo.train.trainer import resolve_cfg

CFG = ("[net]\nwidth=64\nheight=64\nchannels=3\n\n"
       "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\nstride=2\npad=1\nactivation=leaky\n\n"
       "[convolutional]\nsize=1\nstride=1\npad=1\nfilters=21\nactivation=linear\n\n"
       "[yolo]\nmask=0,1,2\nanchors=10,10, 20,20, 40,40\nclasses=2\nnum=3\n")


@pytest.fixture
def misnamed(tmp_path) -> SimpleNamespace:
    """A checkpoint named ``ckpt.weights``, darknet weights named ``dark.pt``, a cfg named ``model.pt``."""
    model = init_random_weights(load_model(parse_cfg_text(CFG, "tiny.cfg")), seed=3)
    folder = tmp_path / "files"
    folder.mkdir()
    save_checkpoint(model, folder / "ckpt.weights")
    model.save_darknet_weights(folder / "dark.pt")
    (folder / "model.pt").write_text(CFG)
    return SimpleNamespace(folder=folder, model=model, checkpoint=folder / "ckpt.weights",
                           darknet=folder / "dark.pt", cfg=folder / "model.pt")


def test_is_checkpoint_reads_the_content(misnamed, tmp_path):
    assert is_checkpoint(misnamed.checkpoint)
    assert not is_checkpoint(misnamed.darknet)
    assert not is_checkpoint(misnamed.cfg)
    with pytest.raises(WeightsError, match=r"missing\.pt: cannot read"):
        is_checkpoint(tmp_path / "missing.pt")
    for path in (misnamed.checkpoint, misnamed.darknet):  # and both load as what they are
        model = load_model(parse_cfg_text(CFG, "tiny.cfg"))
        load_weights(model, path)
        conv = next(iter(model.conv_blocks()))[1].conv
        assert conv.weight.equal(next(iter(misnamed.model.conv_blocks()))[1].conv.weight)


def test_train_config_and_trainer_tell_them_apart(misnamed, tmp_path):
    TrainConfig(data="d", cfg=None, weights=str(misnamed.checkpoint)).check()
    with pytest.raises(SlimYoloError, match=r"'cfg' is required unless weights is a \.pt checkpoint"):
        TrainConfig(data="d", cfg=None, weights=str(misnamed.darknet)).check()
    # A file not written yet (an earlier stage's output) can only be judged by its name.
    TrainConfig(data="d", cfg=None, weights=str(tmp_path / "later.pt")).check()
    with pytest.raises(SlimYoloError, match="'cfg' is required"):
        TrainConfig(data="d", cfg=None, weights=str(tmp_path / "later.weights")).check()
    # cfg may name a checkpoint (its cfg is inside) or a cfg file, whatever their names.
    want = parse_cfg_text(CFG, "tiny.cfg").to_text()
    for cfg in (misnamed.checkpoint, misnamed.cfg):
        assert resolve_cfg(TrainConfig(data="d", cfg=str(cfg)), None).to_text() == want  # type: ignore[arg-type]


def test_stage_inputs_tell_them_apart(misnamed, tmp_path):
    store = LocalStore(tmp_path / "store")
    store.put_tree("inputs/m", misnamed.folder)
    with Workspace(store, WorkConfig(work_dir=str(tmp_path / "work"))) as ws:
        cfg, weights = _model_inputs(ws, SimpleNamespace(weights="inputs/m/ckpt.weights", cfg=None))
        assert cfg is None and weights.name == "model.pt" and is_checkpoint(weights)
        dark = ws.file("inputs/m/dark.pt", "weights", "other.weights")
        assert dark.name == "other.weights" and not is_checkpoint(dark)
        with pytest.raises(SlimYoloError, match=r"cfg: required with darknet \.weights"):
            _model_inputs(ws, SimpleNamespace(weights="inputs/m/dark.pt", cfg=None))
        cfg, weights = _model_inputs(ws, SimpleNamespace(weights="inputs/m/dark.pt", cfg="inputs/m/model.pt"))
        assert isinstance(cfg, Path) and weights.suffix == ".weights"


def test_load_model_of_a_checkpoint_alone_needs_no_cfg(misnamed, tmp_path):
    """`load_model("runs/x/best.pt")`: the cfg comes from inside the checkpoint (told apart by
    content, here a checkpoint named .weights), not a UTF-8 error from reading it as a cfg."""
    want = next(iter(misnamed.model.conv_blocks()))[1].conv.weight
    for model in (load_model(misnamed.checkpoint), load_model(str(misnamed.checkpoint)),
                  load_model(None, misnamed.checkpoint), load_model(misnamed.checkpoint, misnamed.darknet)):
        assert not model.training
        assert next(iter(model.conv_blocks()))[1].conv.weight.equal(want)
        assert model.cfg.to_text() == parse_cfg_text(CFG, "tiny.cfg").to_text()
    with pytest.raises(SlimYoloError, match=r"dark\.pt: darknet \.weights hold no cfg: give the cfg as well"):
        load_model(None, misnamed.darknet)
    with pytest.raises(SlimYoloError, match=r"give a cfg, or a \.pt checkpoint"):
        load_model(None)
    assert load_model(misnamed.cfg, misnamed.darknet).cfg.to_text() == parse_cfg_text(CFG, "t.cfg").to_text()
