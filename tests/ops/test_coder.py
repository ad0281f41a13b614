"""Box coding: torchvision's BoxCoder, round trips, and clamping of exp()."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import BoxCoder

from cvkit.ops.coder import (
    DEFAULT_MAX_LOG_SCALE,
    decode_boxes,
    encode_boxes,
    stds_from_variances,
    stds_from_weights,
)


def test_weights_form_matches_torchvision_box_coder(make_boxes):
    anchors, boxes = make_boxes(200, seed=1), make_boxes(200, seed=2)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    stds = stds_from_weights((10.0, 10.0, 5.0, 5.0))
    expected = coder.encode_single(boxes, anchors)
    torch.testing.assert_close(
        encode_boxes(boxes, anchors, stds=stds), expected, rtol=1e-5, atol=1e-4
    )
    torch.testing.assert_close(
        decode_boxes(expected, anchors, stds=stds),
        coder.decode_single(expected, anchors),
        rtol=1e-6,
        atol=1e-3,
    )


def test_ssd_variance_form_by_hand():
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), size 10 x 20
    box = torch.tensor([[1.0, 2.0, 21.0, 12.0]])  # centre (11, 7), size 20 x 10
    expected = torch.tensor(
        [
            [
                0.6 / 0.1,
                -0.15 / 0.1,
                torch.log(torch.tensor(2.0)) / 0.2,
                torch.log(torch.tensor(0.5)) / 0.2,
            ]
        ]
    )
    codes = encode_boxes(box, anchor, stds=stds_from_variances((0.1, 0.2)))
    torch.testing.assert_close(codes, expected)


def test_decode_broadcasts_over_a_batch_and_clamps(make_boxes):
    anchors = make_boxes(30, seed=3)
    deltas = torch.randn(4, 30, 4, generator=torch.Generator().manual_seed(3))
    batch = decode_boxes(deltas, anchors)
    torch.testing.assert_close(batch[2], decode_boxes(deltas[2], anchors))
    wild = torch.tensor([[0.0, 0.0, 1e4, 1e4]])
    decoded = decode_boxes(wild, anchors[:1])
    assert bool(torch.isfinite(decoded).all())
    width = anchors[0, 2] - anchors[0, 0]
    expected_width = width * torch.exp(torch.tensor(DEFAULT_MAX_LOG_SCALE))
    torch.testing.assert_close(decoded[0, 2] - decoded[0, 0], expected_width)


side = st.floats(1, 50, width=32)  # size ratios stay below the exp() clamp (62.5)
corner = st.floats(-500, 500, width=32)


@settings(max_examples=50, deadline=None)
@given(st.tuples(corner, corner, side, side), st.tuples(corner, corner, side, side))
def test_decode_inverts_encode(box, anchor):
    def to_xyxy(t):
        return torch.tensor([[t[0], t[1], t[0] + t[2], t[1] + t[3]]], dtype=torch.float64)

    box_t, anchor_t = to_xyxy(box), to_xyxy(anchor)
    stds = stds_from_variances((0.1, 0.2))
    means = (0.1, -0.2, 0.0, 0.3)
    codes = encode_boxes(box_t, anchor_t, means=means, stds=stds)
    torch.testing.assert_close(decode_boxes(codes, anchor_t, means=means, stds=stds), box_t)
