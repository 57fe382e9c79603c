"""The YOLO loss: IoU variants, target assignment, consistency with the decoder, distillation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimyolo.darknet import make_cfg
from slimyolo.darknet.model import Darknet
from slimyolo.errors import SlimYoloError
from slimyolo.infer.decode import detect, sigmoid
from slimyolo.train.evaluate import evaluate_detections
from slimyolo.train.loss import IOU_LOSSES, LossGains, YoloLoss, bbox_iou, init_head_biases

SIZE = 128


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return Darknet(make_cfg("yolov4-tiny", 2, SIZE))  # two heads (strides 32, 16), scale_x_y 1.05, CIoU


def _targets():
    # image, class, cx, cy, w, h (normalised): small, large, elongated, two in one image
    return torch.tensor([[0, 0, 0.30, 0.40, 0.10, 0.12], [0, 1, 0.70, 0.60, 0.50, 0.40],
                         [1, 1, 0.50, 0.50, 0.08, 0.40], [1, 0, 0.20, 0.80, 0.25, 0.20]])


@pytest.mark.parametrize("kind", IOU_LOSSES)
def test_iou_variants(kind):
    a = torch.tensor([[5.0, 5.0, 4.0, 2.0]])
    assert bbox_iou(a, a, kind).item() == pytest.approx(1.0, abs=1e-5)
    far = torch.tensor([[50.0, 5.0, 4.0, 2.0]])
    value = bbox_iou(a, far, kind).item()
    assert value == pytest.approx(0.0, abs=1e-6) if kind == "iou" else value < -0.5  # penalised by distance
    half = torch.tensor([[7.0, 5.0, 4.0, 2.0]])  # overlap 2 of width 4: IoU 1/3
    assert bbox_iou(a, half, "iou").item() == pytest.approx(1 / 3, abs=1e-5)


def test_every_target_is_assigned_in_its_own_cell(model):
    loss = YoloLoss(model)
    outputs = [torch.zeros(2, 21, SIZE // h.stride, SIZE // h.stride) for h in model.heads]
    assigned = loss.assign(outputs, _targets())
    seen = set()
    for head, (b, _, gj, gi, tbox, tcls, _) in zip(model.heads, assigned, strict=True):
        g = SIZE // head.stride
        for k in range(len(b)):
            match = [t for t in range(4) if _targets()[t, 0] == b[k] and _targets()[t, 1] == tcls[k]
                     and int(_targets()[t, 2] * g) == gi[k] and int(_targets()[t, 3] * g) == gj[k]]
            assert match, "assigned to a cell that holds no target centre"
            seen.update(match)
        assert ((tbox[:, :2] >= 0) & (tbox[:, :2] < 1)).all()  # offsets inside the cell
    assert seen == {0, 1, 2, 3}


def test_loss_minimum_decodes_to_the_targets(model):
    """Fitting raw heads to the loss gives back the targets through the inference decoder."""
    loss = YoloLoss(model)
    torch.manual_seed(0)
    raw = [torch.nn.Parameter(torch.randn(2, 21, SIZE // h.stride, SIZE // h.stride) * 0.1) for h in model.heads]
    opt = torch.optim.Adam(raw, lr=0.1)
    targets = _targets()
    first = None
    for _ in range(200):
        total, items = loss(raw, targets)
        first = first or items
        opt.zero_grad()
        total.backward()
        opt.step()
    assert items["box"] < 0.05 * first["box"] and items["cls"] < 0.05 * first["cls"]
    dets = detect([r.detach().numpy() for r in raw], model.heads, conf_thres=0.3, iou_thres=0.5)
    gt = []
    for i in range(2):
        t = targets[targets[:, 0] == i, 1:].numpy() * [1, SIZE, SIZE, SIZE, SIZE]
        gt.append(np.c_[t[:, 0], t[:, 1] - t[:, 3] / 2, t[:, 2] - t[:, 4] / 2, t[:, 1] + t[:, 3] / 2,
                        t[:, 2] + t[:, 4] / 2])
    assert evaluate_detections(dets, gt, 2).map50 == pytest.approx(1.0)
    assert sum(len(d) for d in dets) == 4  # one box per target after NMS


def test_iou_loss_comes_from_the_cfg_or_the_override(model):
    assert YoloLoss(model).iou_kind == "ciou"  # yolov4-tiny's cfg says iou_loss=ciou
    v3 = Darknet(make_cfg("yolov3-tiny", 2, 64))
    assert YoloLoss(v3).iou_kind == "giou"  # no iou_loss key: darknet's mse → GIoU
    assert YoloLoss(v3, LossGains(iou_loss="diou")).iou_kind == "diou"
    with pytest.raises(SlimYoloError, match="unsupported iou_loss"):
        YoloLoss(v3, LossGains(iou_loss="l2"))


def test_distillation(model):
    loss = YoloLoss(model)
    torch.manual_seed(1)
    teacher = [torch.randn(2, 21, SIZE // h.stride, SIZE // h.stride) for h in model.heads]
    same = loss.distillation(teacher, teacher)
    other = loss.distillation([t + torch.randn_like(t) for t in teacher], teacher)
    assert other > same
    with pytest.raises(SlimYoloError, match="teacher must have the same heads"):
        loss.distillation(teacher, [t[:, :, :2] for t in teacher])


def test_head_bias_init_sets_a_low_objectness_prior(model):
    m = Darknet(make_cfg("yolov4-tiny", 2, SIZE))
    init_head_biases(m)
    for head in m.heads:
        bias = m.module_list[head.layer - 1].conv.bias.detach().view(len(head.anchors), -1).numpy()
        cells = (SIZE / head.stride) ** 2
        assert sigmoid(bias[:, 4]).mean() == pytest.approx(8 / cells, rel=0.6)
