"""Faster R-CNN parts against torchvision's on the same inputs and weights, and the whole model.

The RPN and the RoI box head are compared with torchvision's ``RegionProposalNetwork`` and
``RoIHeads`` built with the same settings and loaded with cvkit's weights: the proposals, the
final detections, and the training losses under the same sampling seed must agree.
"""

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torchvision.models.detection import roi_heads as tv_roi_heads
from torchvision.models.detection import rpn as tv_rpn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor as TVPredictor
from torchvision.models.detection.faster_rcnn import TwoMLPHead as TVTwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import MultiScaleRoIAlign

from cvkit.config import Config
from cvkit.config.model import RPNConfig
from cvkit.errors import ConfigError
from cvkit.geometry import Geometry
from cvkit.models.build import build_model
from cvkit.models.detection.faster_rcnn import FasterRCNN
from cvkit.models.detection.postprocess import select_detections
from cvkit.models.detection.roi_heads import FastRCNNPredictor, RoIBoxHead, TwoMLPHead
from cvkit.models.detection.rpn import Proposals, RegionProposalNetwork
from cvkit.ops.roi import multiscale_roi_align
from cvkit.structures import Target

SIZE = 128
GRIDS = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
SIZES = [[16.0], [32.0], [64.0], [128.0], [256.0]]
RATIOS = [0.25, 1.0, 4.0]  # width / height; torchvision takes height / width
CHANNELS = 8


def _targets() -> list[Target]:
    geometry = Geometry((SIZE, SIZE), (1.0, 1.0))
    return [
        Target(
            torch.tensor([[10.0, 12.0, 50.0, 70.0], [60.0, 30.0, 120.0, 90.0]]),
            torch.tensor([0, 2]),
            geometry,
        ),
        Target(torch.tensor([[20.0, 20.0, 44.0, 40.0]]), torch.tensor([1]), geometry),
        Target(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), geometry),
    ]


def _tv_targets(targets: list[Target]) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": t.boxes, "labels": t.labels + 1} for t in targets]


def _features(batch: int = 3, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, CHANNELS, h, w, generator=generator) for h, w in GRIDS]


def _rpn_pair(**overrides) -> tuple[RegionProposalNetwork, tv_rpn.RegionProposalNetwork]:
    options = RPNConfig(anchor_sizes=SIZES, anchor_ratios=RATIOS, **overrides)
    torch.manual_seed(0)
    ours = RegionProposalNetwork(CHANNELS, len(GRIDS), options)
    with torch.no_grad():  # spread the scores: a fresh head's near-ties reorder proposals
        for parameter in ours.head.parameters():
            parameter.normal_(std=0.3)
    generator = AnchorGenerator(
        tuple(tuple(s) for s in SIZES), (tuple(1 / r for r in RATIOS),) * len(SIZES)
    )
    head = tv_rpn.RPNHead(CHANNELS, len(RATIOS))
    head.load_state_dict(ours.head.state_dict())
    theirs = tv_rpn.RegionProposalNetwork(
        generator,
        head,
        options.fg_iou_threshold,
        options.bg_iou_threshold,
        options.batch_size_per_image,
        options.positive_fraction,
        {"training": options.pre_nms_top_n_train, "testing": options.pre_nms_top_n_test},
        {"training": options.post_nms_top_n_train, "testing": options.post_nms_top_n_test},
        options.nms_threshold,
    )
    return ours, theirs


def _image_batch(batch: int = 3):
    from cvkit.structures import ImageBatch

    return ImageBatch(torch.zeros(batch, 3, SIZE, SIZE), [(SIZE, SIZE)] * batch)


def test_rpn_anchors_equal_torchvision_anchor_generator():
    ours, theirs = _rpn_pair()
    features = _features(1)
    images = ImageList(torch.zeros(1, 3, SIZE, SIZE), [(SIZE, SIZE)])
    expected = theirs.anchor_generator(images, features)[0]
    torch.testing.assert_close(torch.cat(ours.anchors(features, (SIZE, SIZE))), expected)


def test_rpn_proposals_equal_torchvision():
    ours, theirs = _rpn_pair(pre_nms_top_n_test=300, post_nms_top_n_test=200)
    ours.eval(), theirs.eval()
    features = _features()
    with torch.no_grad():
        proposals, losses = ours(features, _image_batch())
        expected, _ = theirs(
            ImageList(torch.zeros(3, 3, SIZE, SIZE), [(SIZE, SIZE)] * 3),
            OrderedDict((str(i), f) for i, f in enumerate(features)),
        )
    assert losses == {}
    for got, want in zip(proposals.per_image(), expected, strict=True):
        assert got.shape == want.shape and got.shape[0] > 50
        torch.testing.assert_close(got, want)
    # padding after the real proposals is zero and scores nothing
    assert proposals.boxes.shape == (3, 200, 4)
    assert torch.all(proposals.scores[~proposals.valid()] == 0)


def test_rpn_losses_equal_torchvision_with_the_same_sampling_seed():
    ours, theirs = _rpn_pair(batch_size_per_image=64)
    ours.train(), theirs.train()
    features = _features()
    targets = _targets()
    torch.manual_seed(7)
    _, got = ours(features, _image_batch(), targets)
    torch.manual_seed(7)
    _, want = theirs(
        ImageList(torch.zeros(3, 3, SIZE, SIZE), [(SIZE, SIZE)] * 3),
        OrderedDict((str(i), f) for i, f in enumerate(features)),
        _tv_targets(targets),
    )
    torch.testing.assert_close(got["rpn_cls"], want["loss_objectness"])
    torch.testing.assert_close(got["rpn_box"], want["loss_rpn_box_reg"])


def _roi_pair(num_classes: int = 3, batch_size_per_image: int = 64):
    strides = [4, 8, 16, 32]
    torch.manual_seed(1)
    ours = RoIBoxHead(
        lambda feats, rois: multiscale_roi_align(feats, rois, 7, strides, sampling_ratio=2),
        TwoMLPHead(CHANNELS * 49, 32),
        FastRCNNPredictor(32, num_classes),
        num_classes,
        batch_size_per_image=batch_size_per_image,
    )
    box_head, predictor = TVTwoMLPHead(CHANNELS * 49, 32), TVPredictor(32, num_classes + 1)
    box_head.load_state_dict(ours.box_head.state_dict())
    predictor.load_state_dict(ours.box_predictor.state_dict())
    theirs = tv_roi_heads.RoIHeads(
        MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2),
        box_head,
        predictor,
        0.5,
        0.5,
        batch_size_per_image,
        0.25,
        (10.0, 10.0, 5.0, 5.0),
        0.05,
        0.5,
        100,
    )
    return ours, theirs


def _proposals(batch: int = 3, count: int = 40, seed: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, count, 2, generator=generator) * 90
    wh = torch.rand(batch, count, 2, generator=generator) * 60 + 4
    return torch.cat([xy, (xy + wh).clamp(max=SIZE)], dim=2)


def test_roi_head_losses_equal_torchvision_with_the_same_sampling_seed():
    ours, theirs = _roi_pair()
    ours.train(), theirs.train()
    features = _features()[:4]
    proposals = list(_proposals())
    targets = _targets()
    torch.manual_seed(3)
    got = ours.loss(features, proposals, targets)
    torch.manual_seed(3)
    _, want = theirs(
        OrderedDict((str(i), f) for i, f in enumerate(features)),
        proposals,
        [(SIZE, SIZE)] * 3,
        _tv_targets(targets),
    )
    torch.testing.assert_close(got["roi_cls"], want["loss_classifier"])
    torch.testing.assert_close(got["roi_box"], want["loss_box_reg"])


def test_roi_head_detections_equal_torchvision_postprocess():
    ours, theirs = _roi_pair()
    ours.eval(), theirs.eval()
    features = _features()[:4]
    padded = _proposals(count=50)
    count = torch.tensor([50, 31, 0])
    padded[1, 31:] = 0  # the second image has 31 real proposals, the third none
    padded[2] = 0
    with torch.no_grad():
        boxes, scores = ours.candidates(
            features, Proposals(padded, torch.ones(3, 50), count), [(SIZE, SIZE)] * 3
        )
        got = select_detections(boxes, scores, [(SIZE, SIZE)] * 3, 0.05, 0.5, 100, 10**6)
        want, _ = theirs(
            OrderedDict((str(i), f) for i, f in enumerate(features)),
            [p[:n] for p, n in zip(padded, count, strict=True)],
            [(SIZE, SIZE)] * 3,
        )
    assert boxes.shape == (3, 50, 3, 4) and scores.shape == (3, 50, 3)
    assert torch.all(scores[2] == 0) and len(got[2]) == 0 == len(want[2]["boxes"])
    for mine, reference in zip(got, want, strict=True):
        order = torch.argsort(reference["scores"], descending=True, stable=True)
        torch.testing.assert_close(mine.scores, reference["scores"][order])
        torch.testing.assert_close(mine.boxes, reference["boxes"][order])
        torch.testing.assert_close(mine.labels + 1, reference["labels"][order])
    assert len(got[0]) > 10


def _config(out_features=("layer1", "layer2", "layer3", "layer4"), **faster_rcnn) -> Config:
    options = {
        "fpn_channels": 16,
        "representation_size": 64,
        "rpn": {"anchor_sizes": [[8.0], [16.0], [32.0], [64.0], [128.0]]},
        **faster_rcnn,
    }
    return Config.model_validate(
        {
            "task": "detect",
            "model": {
                "name": "faster_rcnn",
                "backbone": "resnet18_tiny",
                "out_features": list(out_features),
                "faster_rcnn": options,
            },
        }
    )


def test_faster_rcnn_builds_from_config_and_follows_the_detector_contract():
    torch.manual_seed(0)
    model = build_model(_config(), num_classes=3)
    assert isinstance(model, FasterRCNN) and model.size_divisibility == 32
    images = torch.randn(2, 3, SIZE, SIZE)
    model.train()
    losses = model(images, _targets()[:2])
    assert set(losses) == {"rpn_cls", "rpn_box", "roi_cls", "roi_box"}
    sum(losses.values()).backward()
    assert model.rpn.head.cls_logits.weight.grad.abs().sum() > 0
    assert model.roi_heads.box_predictor.bbox_pred.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        detections = model(images)
        boxes, scores = model.candidates(images)
    assert boxes.shape == (2, 1000, 3, 4) and scores.shape == (2, 1000, 3)
    expected = select_detections(boxes, scores, [(SIZE, SIZE)] * 2, 0.01, 0.5, 100, 1000)
    for got, want in zip(detections, expected, strict=True):
        torch.testing.assert_close(got.boxes, want.boxes)
        assert got.image_size == (SIZE, SIZE)


def test_inference_settings_are_read_when_the_forward_runs():
    torch.manual_seed(0)
    model = build_model(_config(), num_classes=3).eval()
    images = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        many = model(images)[0]
        model.inference = model.inference.model_copy(update={"max_det": 5})
        few = model(images)[0]
    assert len(many) > 5 and len(few) == 5
    torch.testing.assert_close(few.scores, many.scores[:5])


def test_unequal_anchor_lists_name_the_key():
    with pytest.raises(ConfigError, match="anchor_sizes"):
        build_model(_config(rpn={"anchor_sizes": [[8.0], [16.0]]}), num_classes=2)
    with pytest.raises(ConfigError, match="same number of sizes"):
        build_model(
            _config(rpn={"anchor_sizes": [[8.0, 12.0], [16.0], [32.0], [64.0], [128.0]]}),
            num_classes=2,
        )


def _painted(count: int, size: int = 64) -> tuple[torch.Tensor, list[Target]]:
    """Noise images with filled rectangles whose colour is their class (red, green, blue)."""
    generator = torch.Generator().manual_seed(4)
    images = torch.rand(count, 3, size, size, generator=generator) * 0.3
    targets = []
    for image in images:
        n = int(torch.randint(1, 4, (1,), generator=generator))
        xy = (torch.rand(n, 2, generator=generator) * size * 0.6).round()
        wh = (12 + torch.rand(n, 2, generator=generator) * size * 0.35).round()
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], 1)
        labels = torch.randint(0, 3, (n,), generator=generator)
        for box, label in zip(boxes.int().tolist(), labels, strict=True):
            image[:, box[1] : box[3], box[0] : box[2]] = 0
            image[label, box[1] : box[3], box[0] : box[2]] = 1
        targets.append(Target(boxes, labels, Geometry((size, size), (1.0, 1.0))))
    return (images - 0.5) / 0.25, targets


STEPS = 60


def test_faster_rcnn_overfits_four_images_to_map50_above_0_9(overfit_map50):
    torch.manual_seed(0)
    model = build_model(
        _config(
            ("layer2", "layer3", "layer4"),
            fpn_channels=32,
            representation_size=128,
            batch_size_per_image=64,
            rpn={
                "anchor_sizes": [[16.0], [32.0], [64.0], [128.0]],
                "pre_nms_top_n_train": 300,
                "post_nms_top_n_train": 150,
                "pre_nms_top_n_test": 150,
                "post_nms_top_n_test": 100,
            },
        ),
        num_classes=3,
    )
    images, targets = _painted(4)
    assert overfit_map50(model, images, targets, STEPS, lr=2e-3) > 0.9


def test_r50_fpn_preset_loads_a_torchvision_resnet50_file(tmp_path):
    import torchvision

    from cvkit.config import load_config
    from cvkit.engine.tasks.detect import DetectTask

    source = torchvision.models.resnet50()
    with torch.no_grad():  # not the initialization cvkit draws: loading must copy them
        for parameter in source.parameters():
            parameter.uniform_(-1, 1)
    path = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), path)
    preset = Path(__file__).resolve().parents[2] / "configs" / "faster_rcnn_r50_fpn.yaml"
    config = load_config(preset, [f"model.pretrained={path}"])
    model = DetectTask(config).build_model(num_classes=90)
    loaded = model.backbone.state_dict()
    body = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert set(body) <= set(loaded)
    for name, value in body.items():
        assert torch.equal(loaded[name], value), name
    # torchvision's layout: FPN on layer1..layer4 plus a pool level, stem and layer1 frozen
    assert [spec.stride for spec in model.neck.output_shapes.values()] == [4, 8, 16, 32, 64]
    assert not any(p.requires_grad for p in model.backbone.layer1.parameters())
    assert all(p.requires_grad for p in model.backbone.layer2.parameters())
    assert model.roi_heads.box_predictor.cls_score.out_features == 91
