"""Shapes, losses, decoding/NMS and bad input of vizoo's detection and segmentation heads."""

import pytest
import torch
from torchvision.ops import batched_nms

from vizoo.heads import create_detector, create_segmentor, decode_boxes, fcos_targets, level_points, scale_ranges

BACKBONES = ["test_vmamba", "resnet18"]


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("head", ["upernet", "mlp", "fpn"])
def test_segmentor_shapes_non_square(backbone, head):
    model = create_segmentor(backbone, head, num_classes=3, channels=16).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 3, 64, 96)
    assert torch.isfinite(out).all()


def test_segmentor_backward_reaches_backbone():
    model = create_segmentor("test_vmamba", "upernet", num_classes=2, channels=16)
    logits = model(torch.randn(2, 3, 64, 64))
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 2, (2, 64, 64))).backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad]
    assert grads and all(g is not None for g in grads[:5])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_detector_raw_outputs_loss_backward(backbone):
    model = create_detector(backbone, num_classes=2, fpn_channels=16, num_convs=1, extra_levels=1)
    x = torch.randn(2, 3, 64, 96)
    cls, dist, ctr = model(x)
    n = sum(h * w for h, w in model._sizes)
    assert cls.shape == (2, n, 2) and dist.shape == (2, n, 4) and ctr.shape == (2, n)
    assert model.strides == [model.backbone.reductions[0] * 2**i for i in range(4)]
    targets = [
        {"boxes": torch.tensor([[10.0, 8.0, 50.0, 40.0], [60.0, 20.0, 90.0, 60.0]]), "labels": torch.tensor([0, 1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    losses = model.loss(x, targets)
    assert set(losses) == {"loss_cls", "loss_box", "loss_ctr"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.head.bbox_pred.weight.grad.abs().sum() > 0
    model.eval()
    dets = model.predict(x)
    assert len(dets) == 2 and dets[0]["boxes"].shape[1] == 4
    assert (dets[0]["boxes"][:, 2] <= 96).all() and (dets[0]["boxes"][:, 3] <= 64).all()


@pytest.mark.parametrize("fpn_channels", [16, 32, 96])
def test_small_detector_runs_one_small_image(fpn_channels):
    """A 64x64 image puts the top levels (P6, P7) at 1x1: GroupNorm keeps at least two channels per group there, so a
    narrow FPN still takes batch 1 (one channel per group would normalise a single value)."""
    model = create_detector("test_vmamba", 2, fpn_channels=fpn_channels, num_convs=1).eval()
    norms = [m for m in model.head.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_channels // m.num_groups >= 2 for m in norms)
    assert norms[0].num_groups == {16: 8, 32: 16, 96: 32}[fpn_channels]
    detections = model.predict(torch.randn(1, 3, 64, 64))
    assert model._sizes[-1] == (1, 1) and len(detections) == 1


def test_decode_and_targets_on_hand_made_boxes():
    points = torch.tensor([[20.0, 30.0]])
    assert torch.equal(
        decode_boxes(points, torch.tensor([[5.0, 10.0, 15.0, 20.0]])), torch.tensor([[15.0, 20.0, 35.0, 50.0]])
    )
    strides = [8, 16]
    pts = level_points([(4, 4), (2, 2)], strides)
    assert (
        pts.shape == (20, 2)
        and torch.equal(pts[0], torch.tensor([4.0, 4.0]))
        and torch.equal(pts[16], torch.tensor([8.0, 8.0]))
    )
    assert scale_ranges(strides) == [(0.0, 64.0), (64.0, float("inf"))]
    s = torch.tensor([8.0] * 16 + [16.0] * 4)
    r = torch.tensor([scale_ranges(strides)[0]] * 16 + [scale_ranges(strides)[1]] * 4)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 32.0, 32.0]])
    matched, target = fcos_targets(pts, s, r, boxes, torch.tensor([0, 1]), center_radius=1.5)
    # point (4, 4) lies in both boxes: the smaller one wins; distances to its sides
    assert matched[0] == 0 and torch.equal(target[0], torch.tensor([4.0, 4.0, 12.0, 12.0]))
    # point (28, 28) is inside box 1 but farther than 1.5 strides from its centre (16, 16): background
    assert matched[15] == -1
    # level 2 (stride 16) only takes boxes whose largest distance is >= 64: none here
    assert (matched[16:] == -1).all()


def test_batched_nms_keeps_one_per_class():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 1, 0])
    assert batched_nms(boxes, scores, labels, 0.5).tolist() == [0, 2, 3]


def test_bad_input_errors():
    with pytest.raises(ValueError, match="unknown backbone"):
        create_segmentor("not_a_model", "mlp", 2)
    with pytest.raises(ValueError, match=r"out_indices \(5,\) out of range.*4 feature levels"):
        create_detector("test_vmamba", 2, out_indices=(5,))
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        create_detector("test_vmamba", 0)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        create_segmentor("test_vmamba", "mlp", num_classes=2.5)
    with pytest.raises(ValueError, match="unknown segmentation head"):
        create_segmentor("test_vmamba", "deeplab", 2)
    model = create_detector("test_vmamba", 1, fpn_channels=16, num_convs=1, extra_levels=0)
    with pytest.raises(ValueError, match="target labels must be in"):
        model.loss(
            torch.randn(1, 3, 64, 64), [{"boxes": torch.tensor([[0.0, 0, 30, 30]]), "labels": torch.tensor([3])}]
        )


def test_default_levels_follow_the_backbone():
    """Detection takes the last three feature levels, segmentation the last four: strides 8-32 and 4-32 on a
    four-stage model, all three stages (strides 16-64) of MobileMamba."""
    assert create_detector("test_vmamba", 2).backbone.reductions == [8, 16, 32]
    assert create_segmentor("test_vmamba", num_classes=2).backbone.reductions == [4, 8, 16, 32]
    detector = create_detector("test_mobilemamba", 2)
    assert detector.backbone.reductions == [16, 32, 64]
    segmentor = create_segmentor("test_mobilemamba", num_classes=3).eval()
    with torch.no_grad():
        assert segmentor(torch.randn(1, 3, 128, 192)).shape == (1, 3, 128, 192)
