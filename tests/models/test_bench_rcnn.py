"""The whole cvkit Faster R-CNN against torchvision's ``FasterRCNN`` built by
benchmarks/bench_rcnn.py on the same backbone, FPN and head weights: the benchmark compares
like with like only if the two give the same detections and the same training losses."""

import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_rcnn

        yield bench_rcnn
    finally:
        sys.path.remove(str(BENCHMARKS))


def _pair(bench):
    from cvkit.config import load_config

    config = load_config(
        BENCHMARKS.parent / "configs" / "faster_rcnn.yaml",
        [
            "data.image_size=128",
            "model.faster_rcnn.fpn_channels=16",
            "model.faster_rcnn.representation_size=32",
            "model.faster_rcnn.rpn.pre_nms_top_n_test=200",
            "model.faster_rcnn.rpn.post_nms_top_n_test=100",
            "model.faster_rcnn.rpn.pre_nms_top_n_train=200",
            "model.faster_rcnn.rpn.post_nms_top_n_train=100",
            "eval.score_threshold=0.2",
        ],
    )
    ours, theirs = bench.build_pair(config, 3)
    with torch.no_grad():  # spread the objectness: a fresh head's near-ties reorder proposals
        for parameter in ours.rpn.head.cls_logits.parameters():
            parameter.normal_(std=0.3)
        for parameter in ours.roi_heads.box_predictor.cls_score.parameters():
            parameter.normal_(std=0.3)
    theirs.model.rpn.head.load_state_dict(ours.rpn.head.state_dict())
    theirs.model.roi_heads.box_predictor.load_state_dict(ours.roi_heads.box_predictor.state_dict())
    return ours, theirs


def _images():
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))


def test_bench_pair_gives_torchvisions_detections(bench):
    ours, theirs = _pair(bench)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        got, want = ours(_images()), theirs(_images())
    assert sum(len(d) for d in want) > 5
    for mine, reference in zip(got, want, strict=True):
        assert len(mine) == len(reference)
        torch.testing.assert_close(mine.boxes, reference.boxes, atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(mine.scores, reference.scores, atol=1e-5, rtol=1e-4)
        assert torch.equal(mine.labels, reference.labels)


def test_bench_pair_gives_torchvisions_losses_with_the_same_seed(bench):
    from cvkit.geometry import Geometry
    from cvkit.structures import Target

    ours, theirs = _pair(bench)
    ours.train(), theirs.train()
    geometry = Geometry((128, 128), (1.0, 1.0))
    targets = [
        Target(torch.tensor([[8.0, 10.0, 50.0, 60.0]]), torch.tensor([1]), geometry),
        Target(
            torch.tensor([[30.0, 20.0, 120.0, 70.0], [5.0, 5.0, 25.0, 30.0]]),
            torch.tensor([0, 2]),
            geometry,
        ),
    ]
    torch.manual_seed(5)
    for _ in targets:  # torchvision's training transform draws one number per image (its size)
        torch.empty(1).uniform_()
    got = ours(_images(), targets)
    torch.manual_seed(5)
    want = theirs(_images(), targets)
    names = {
        "rpn_cls": "loss_objectness",
        "rpn_box": "loss_rpn_box_reg",
        "roi_cls": "loss_classifier",
        "roi_box": "loss_box_reg",
    }
    for mine, reference in names.items():
        torch.testing.assert_close(got[mine], want[reference], atol=1e-5, rtol=1e-4)


def test_bench_training_table_takes_the_rcnn_call(bench):
    """bench_rcnn renders bench_train's table with rates and scores only."""
    rates = {"cvkit": 12.0, "torchvision": 10.0}
    scores = {"cvkit": {"mAP": 0.25, "mAP50": 0.5, "time_s": 30.0}}
    header, rule, ours, theirs = bench.training_table(rates, scores)
    assert header.count("|") == rule.count("|") == ours.count("|") == theirs.count("|") == 6
    assert ours == "| cvkit | 12.0 | 0.2500 | 0.5000 | 30 s |"
    assert theirs == "| torchvision | 10.0 | — | — | — |"
