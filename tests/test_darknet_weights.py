"""Darknet .weights and .pt checkpoints: bit-exact round trips and clear size errors."""

from __future__ import annotations

import struct

import pytest
import torch

from slimyolo.darknet import load_model, make_cfg
from slimyolo.darknet.flops import model_stats
from slimyolo.darknet.init import init_random_weights
from slimyolo.darknet.weights import checkpoint_cfg, save_checkpoint
from slimyolo.darknet.zoo import ZOO
from slimyolo.errors import WeightsError


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(ZOO))
def test_weights_round_trip_is_bit_exact(name, tmp_path):
    cfg = make_cfg(name, 2, 96)
    model = init_random_weights(load_model(cfg), seed=1)
    first = tmp_path / "a.weights"
    model.save_darknet_weights(first)
    data = first.read_bytes()
    assert len(data) == model_stats(cfg).weights_bytes
    assert struct.unpack_from("<3iq", data) == (0, 2, 5, 0)
    again = load_model(cfg, first)
    second = tmp_path / "b.weights"
    again.save_darknet_weights(second)
    assert second.read_bytes() == data
    for k, v in model.state_dict().items():
        if not k.endswith("num_batches_tracked"):  # a torch counter darknet does not store
            assert torch.equal(v, again.state_dict()[k]), k


def test_layout_is_beta_gamma_mean_var_kernel(tmp_path):
    """The first convolution's values sit where darknet reads them."""
    model = init_random_weights(load_model(make_cfg("yolov3-tiny", 1, 64)), seed=2)
    model.save_darknet_weights(tmp_path / "m.weights")
    data = (tmp_path / "m.weights").read_bytes()
    block = model.conv_blocks()[0][1]
    n = block.conv.out_channels
    floats = torch.frombuffer(bytearray(data[20:20 + 4 * (4 * n + block.conv.weight.numel())]), dtype=torch.float32)
    assert torch.equal(floats[:n], block.bn.bias.detach())
    assert torch.equal(floats[n:2 * n], block.bn.weight.detach())
    assert torch.equal(floats[2 * n:3 * n], block.bn.running_mean)
    assert torch.equal(floats[3 * n:4 * n], block.bn.running_var)
    assert torch.equal(floats[4 * n:], block.conv.weight.detach().flatten())


def test_old_header_with_32bit_seen_round_trips(tmp_path):
    cfg = make_cfg("yolov3-tiny", 1, 64)
    model = init_random_weights(load_model(cfg), seed=0)
    model.save_darknet_weights(tmp_path / "new.weights")
    body = (tmp_path / "new.weights").read_bytes()[20:]
    old = struct.pack("<3ii", 0, 1, 0, 123456) + body
    (tmp_path / "old.weights").write_bytes(old)
    loaded = load_model(cfg, tmp_path / "old.weights")
    assert loaded.header == (0, 1, 0, 123456, 4)
    loaded.save_darknet_weights(tmp_path / "again.weights")
    assert (tmp_path / "again.weights").read_bytes() == old


@pytest.mark.parametrize("delta", [-4, -1000, 8])
def test_wrong_size_names_expected_and_actual_bytes_and_leaves_model_untouched(tmp_path, delta):
    cfg = make_cfg("yolov4-tiny", 2, 64)
    model = init_random_weights(load_model(cfg), seed=0)
    good = tmp_path / "good.weights"
    model.save_darknet_weights(good)
    data = good.read_bytes()
    bad = tmp_path / "bad.weights"
    bad.write_bytes(data[:delta] if delta < 0 else data + bytes(delta))
    target = init_random_weights(load_model(cfg), seed=5)
    before = _snapshot(target)
    with pytest.raises(WeightsError) as err:
        target.load_darknet_weights(bad)
    msg = str(err.value)
    assert f"expected {len(data)} bytes" in msg and f"got {len(data) + delta} bytes" in msg
    assert ("too short" if delta < 0 else "too long") in msg and str(bad) in msg
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_weights_of_another_cfg_are_rejected(tmp_path):
    small = init_random_weights(load_model(make_cfg("yolov3-tiny", 2, 64)), seed=0)
    small.save_darknet_weights(tmp_path / "tiny.weights")
    with pytest.raises(WeightsError, match="Is it the weights of another cfg"):
        load_model(make_cfg("yolov4-tiny", 2, 64), tmp_path / "tiny.weights")
    with pytest.raises(WeightsError, match="cannot read"):
        load_model(make_cfg("yolov4-tiny", 2, 64), tmp_path / "missing.weights")


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    cfg = make_cfg("yolov4-tiny", 2, 64)
    model = init_random_weights(load_model(cfg), seed=4)
    save_checkpoint(model, tmp_path / "m.pt", epoch=3)
    assert checkpoint_cfg(tmp_path / "m.pt") == cfg
    loaded = load_model(cfg, tmp_path / "m.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    with pytest.raises(WeightsError, match="does not fit this cfg"):
        load_model(make_cfg("yolov4-tiny", 3, 64), tmp_path / "m.pt")
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(WeightsError, match="not a readable SlimYOLO checkpoint"):
        load_model(cfg, tmp_path / "junk.pt")
