"""The YOLOv3/v4 training loss on the raw heads, consistent with darknet's decoding.

Box predictions are decoded exactly as :mod:`slimyolo.infer.decode` does at inference
(``xy = σ(t)·s − (s−1)/2``, ``wh = exp(t)·anchor``, anchors and ``scale_x_y`` from the
cfg), so what is trained is what is deployed. The rest follows the ultralytics trainers the
original pruning projects used:

- a target is assigned, in its own grid cell, to every anchor of every head whose
  width/height IoU with it exceeds ``iou_t`` (the cfg's ``iou_thresh`` when it has one), and
  always to its single best anchor over all heads, so no target goes unassigned;
- box loss ``1 − IoU`` with CIoU, DIoU, GIoU or plain IoU (the cfg's ``iou_loss``; darknet's
  default ``mse`` is not implemented and means GIoU, as in ultralytics);
- objectness BCE against the (detached, clamped) IoU of the assigned prediction, per-head
  balanced by stride; class BCE against one-hot targets;
- gains as yolov5's (box 0.05, obj 1.0, cls 0.5, scaled for the number of heads, classes and
  the input size), loss multiplied by the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from slimyolo.darknet.graph import Head
from slimyolo.darknet.model import Darknet
from slimyolo.errors import SlimYoloError
from slimyolo.train.options import IOU_LOSSES, LossGains

STRIDE_BALANCE = {8: 4.0, 16: 1.0, 32: 0.4, 64: 0.1}  # yolov5's per-level objectness weights
WH_LOGIT_MAX = 4.0  # exp(4) ≈ 55× the anchor: keeps an untrained head from overflowing


def bbox_iou(b1: torch.Tensor, b2: torch.Tensor, kind: str, eps: float = 1e-7) -> torch.Tensor:
    """IoU variant of paired (n, 4) ``cx, cy, w, h`` boxes."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = b1.unbind(-1), b2.unbind(-1)
    b1x1, b1x2, b1y1, b1y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    b2x1, b2x2, b2y1, b2y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = ((torch.minimum(b1x2, b2x2) - torch.maximum(b1x1, b2x1)).clamp(0)
             * (torch.minimum(b1y2, b2y2) - torch.maximum(b1y1, b2y1)).clamp(0))
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if kind == "iou":
        return iou
    cw = torch.maximum(b1x2, b2x2) - torch.minimum(b1x1, b2x1)
    ch = torch.maximum(b1y2, b2y2) - torch.minimum(b1y1, b2y1)
    if kind == "giou":
        c_area = cw * ch + eps
        return iou - (c_area - union) / c_area
    c2 = cw ** 2 + ch ** 2 + eps
    rho2 = ((x2 - x1) ** 2 + (y2 - y1) ** 2)
    if kind == "diou":
        return iou - rho2 / c2
    v = (4 / math.pi ** 2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def head_view(raw: torch.Tensor, head: Head) -> torch.Tensor:
    """(N, A·(5+C), H, W) → (N, A, H, W, 5+C)."""
    n, _, h, w = raw.shape
    return raw.view(n, len(head.anchors), 5 + head.classes, h, w).permute(0, 1, 3, 4, 2)


def decode_boxes(p: torch.Tensor, head: Head, anchors: torch.Tensor) -> torch.Tensor:
    """Box part of predictions (n, 5+C) → (n, 4) ``cx, cy, w, h`` in grid units relative to their cell."""
    s = head.scale_x_y
    if head.new_coords:
        xy = p[:, :2] * s - 0.5 * (s - 1)
        wh = (2 * p[:, 2:4]) ** 2 * anchors
    else:
        xy = torch.sigmoid(p[:, :2]) * s - 0.5 * (s - 1)
        wh = torch.exp(p[:, 2:4].clamp(max=WH_LOGIT_MAX)) * anchors
    return torch.cat([xy, wh], 1)


def _wh_iou(wh1: torch.Tensor, wh2: torch.Tensor) -> torch.Tensor:
    """(T, 2) × (A, 2) → (T, A) IoU of boxes sharing a centre."""
    inter = torch.minimum(wh1[:, None], wh2[None]).prod(2)
    return inter / (wh1.prod(1)[:, None] + wh2.prod(1)[None] - inter + 1e-9)


class YoloLoss:
    """``loss(outputs, targets) -> (total, {"box", "obj", "cls"})`` for one model's heads.

    ``targets`` is (M, 6): image index in the batch, class, cx, cy, w, h normalised to the
    input (what :class:`slimyolo.data.loader.YoloDataset` yields).
    """

    def __init__(self, model: Darknet, gains: LossGains | None = None) -> None:
        gains = gains or LossGains()
        self.heads: list[Head] = model.heads
        sections = [model.cfg.layers[h.layer] for h in self.heads]
        kinds = {(gains.iou_loss or s.get_str("iou_loss", "giou")).lower() for s in sections}
        kinds = {"giou" if k == "mse" else k for k in kinds}
        unknown = kinds - set(IOU_LOSSES)
        if unknown:
            raise SlimYoloError(f"unsupported iou_loss {sorted(unknown)}; supported: {', '.join(IOU_LOSSES)}")
        self.iou_kind = kinds.pop() if len(kinds) == 1 else "ciou"
        self.iou_t = gains.iou_t if gains.iou_t is not None else sections[0].get_float("iou_thresh", 0.2)
        nl = len(self.heads)
        h, w = model.input_size
        self.gain_box = gains.box * 3 / nl
        self.gain_cls = gains.cls * self.heads[0].classes / 80 * 3 / nl
        self.gain_obj = gains.obj * (h * w / 640 ** 2) * 3 / nl
        self.balance = [STRIDE_BALANCE.get(hd.stride, 0.1) for hd in self.heads]

    def assign(self, outputs: Sequence[torch.Tensor], targets: torch.Tensor
               ) -> list[tuple[torch.Tensor, ...]]:
        """Per head: (image, anchor, gy, gx, target box cx,cy,w,h in cell units, class, anchor wh)."""
        device = targets.device
        anchors = [torch.tensor(h.anchors, dtype=torch.float32, device=device) / h.stride for h in self.heads]
        sizes = [(o.shape[2], o.shape[3]) for o in outputs]
        # The best anchor over all heads, by IoU of shapes in pixels.
        all_px = torch.cat([torch.tensor(h.anchors, dtype=torch.float32, device=device) for h in self.heads])
        in_h, in_w = sizes[0][0] * self.heads[0].stride, sizes[0][1] * self.heads[0].stride
        twh_px = targets[:, 4:6] * torch.tensor([in_w, in_h], dtype=torch.float32, device=device)
        best = _wh_iou(twh_px, all_px).argmax(1) if len(targets) else torch.zeros(0, dtype=torch.long)
        out = []
        offset = 0
        for k, (head, (gh, gw)) in enumerate(zip(self.heads, sizes, strict=True)):
            na = len(head.anchors)
            gxy = targets[:, 2:4] * torch.tensor([gw, gh], dtype=torch.float32, device=device)
            gwh = targets[:, 4:6] * torch.tensor([gw, gh], dtype=torch.float32, device=device)
            iou = _wh_iou(gwh, anchors[k]) if len(targets) else torch.zeros((0, na), device=device)
            match = iou > self.iou_t
            own = (best >= offset) & (best < offset + na)
            match[own.nonzero().squeeze(1), best[own] - offset] = True
            offset += na
            t_idx, a_idx = match.nonzero(as_tuple=True)
            g = gxy[t_idx]
            gi = g[:, 0].long().clamp(0, gw - 1)
            gj = g[:, 1].long().clamp(0, gh - 1)
            tbox = torch.cat([g - torch.stack([gi, gj], 1).float(), gwh[t_idx]], 1)
            out.append((targets[t_idx, 0].long(), a_idx, gj, gi, tbox, targets[t_idx, 1].long(),
                        anchors[k][a_idx]))
        return out

    def __call__(self, outputs: Sequence[torch.Tensor], targets: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        device = outputs[0].device
        lbox = torch.zeros((), device=device)
        lobj = torch.zeros((), device=device)
        lcls = torch.zeros((), device=device)
        for head, raw, balance, (b, a, gj, gi, tbox, tcls, anc) in zip(
                self.heads, outputs, self.balance, self.assign(outputs, targets), strict=True):
            p = head_view(raw.float(), head)
            tobj = torch.zeros(p.shape[:4], device=device)
            if len(b):
                ps = p[b, a, gj, gi]
                iou = bbox_iou(decode_boxes(ps, head, anc), tbox, self.iou_kind)
                lbox = lbox + (1.0 - iou).mean()
                tobj[b, a, gj, gi] = iou.detach().clamp(0)
                onehot = torch.zeros_like(ps[:, 5:])
                onehot[torch.arange(len(b), device=device), tcls] = 1.0
                lcls = lcls + F.binary_cross_entropy_with_logits(ps[:, 5:], onehot)
            obj_logit = p[..., 4]
            if head.new_coords:  # the head is already logistic
                lobj = lobj + balance * F.binary_cross_entropy(obj_logit.clamp(1e-6, 1 - 1e-6), tobj)
            else:
                lobj = lobj + balance * F.binary_cross_entropy_with_logits(obj_logit, tobj)
        bs = outputs[0].shape[0]
        lbox, lobj, lcls = lbox * self.gain_box, lobj * self.gain_obj, lcls * self.gain_cls
        total = (lbox + lobj + lcls) * bs
        return total, {"box": float(lbox.detach()), "obj": float(lobj.detach()), "cls": float(lcls.detach())}

    def distillation(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
        """Output distillation from an (unpruned) teacher with the same heads.

        Objectness learns the teacher's objectness probabilities everywhere; classes and box
        offsets learn the teacher's where the teacher sees an object (weighted by its
        objectness). Gains and batch scaling are those of the detection loss.
        """
        total = torch.zeros((), device=student[0].device)
        for head, s_raw, t_raw, balance in zip(self.heads, student, teacher, self.balance, strict=True):
            if s_raw.shape != t_raw.shape:
                raise SlimYoloError(f"teacher head of layer {head.layer} has shape {tuple(t_raw.shape)}, "
                                    f"the student's {tuple(s_raw.shape)}: the teacher must have the same heads")
            s, t = head_view(s_raw.float(), head), head_view(t_raw.float().detach(), head)
            t_obj = torch.sigmoid(t[..., 4])
            weight = t_obj / t_obj.sum().clamp(min=1.0)
            obj = F.binary_cross_entropy_with_logits(s[..., 4], t_obj)
            cls = (F.binary_cross_entropy_with_logits(s[..., 5:], torch.sigmoid(t[..., 5:]), reduction="none")
                   .mean(-1) * weight).sum()
            box = (((torch.sigmoid(s[..., :2]) - torch.sigmoid(t[..., :2])) ** 2).sum(-1)
                   + ((s[..., 2:4] - t[..., 2:4]) ** 2).sum(-1))
            total = total + balance * obj * self.gain_obj + cls * self.gain_cls + (box * weight).sum() * self.gain_box
        return total * student[0].shape[0]


@torch.no_grad()
def init_head_biases(model: Darknet) -> None:
    """Start objectness near 8 objects per image and classes near 0.6/C (yolov5's bias init).

    Training from scratch otherwise spends its first epochs pushing thousands of objectness
    logits from 0.5 down to ~0.
    """
    h, w = model.input_size
    for head in model.heads:
        block = model.module_list[head.layer - 1]
        bias = block.conv.bias
        if bias is None or head.new_coords:
            continue
        b = bias.view(len(head.anchors), -1)
        b[:, 4] += math.log(8 / (h * w / head.stride ** 2))
        b[:, 5:] += math.log(0.6 / (head.classes - 0.99))
