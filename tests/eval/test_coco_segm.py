"""COCO mask mAP (``iou_type="segm"``): cvkit's results and both backends equal pycocotools'
``COCOeval(iouType='segm')`` run directly on the same RLEs."""

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cvkit.errors import DatasetError
from cvkit.eval.coco import detections_to_coco, evaluate_coco, mask_rles

CATEGORY_IDS = [2, 5, 9]
NAMES = ["disc", "block", "ring"]
HEIGHT, WIDTH = 120, 160


def _ellipse(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    ys, xs = np.mgrid[:HEIGHT, :WIDTH]
    return ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _scene(seed: int) -> tuple[dict, list[dict]]:
    """Ground truth (ellipses of 3..62 px radius: small, medium and large objects) and
    detections: each truth's mask shifted by a few pixels (partial overlap), sometimes with a
    wrong class, plus false positives. The last image has truths but no detections."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    for image_id in range(1, 7):
        images.append({"id": image_id, "height": HEIGHT, "width": WIDTH})
        masks, labels = [], []
        for _ in range(rng.integers(1, 5)):
            ry, rx = rng.uniform(3, 62, size=2)
            mask = _ellipse(rng.uniform(20, 100), rng.uniform(20, 140), ry, rx)
            label = int(rng.integers(0, 3))
            encoded = _rle(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[label],
                    "segmentation": encoded,
                    "area": float(mask.sum()),
                    "bbox": mask_utils.toBbox(encoded).tolist(),
                    "iscrowd": 0,
                }
            )
            shift = rng.integers(-6, 7, size=2)
            masks.append(np.roll(mask, tuple(shift), axis=(0, 1)))
            labels.append(label if rng.random() > 0.15 else int(rng.integers(0, 3)))
        for _ in range(rng.integers(0, 3)):
            masks.append(_ellipse(*rng.uniform([10, 10, 3, 3], [110, 150, 30, 30])))
            labels.append(int(rng.integers(0, 3)))
        if image_id == 6:
            masks, labels = [], []
        stack = np.array(masks, dtype=bool).reshape(-1, HEIGHT, WIDTH)
        boxes = [mask_utils.toBbox(_rle(m)) for m in stack]
        detections.append(
            {
                "boxes": torch.tensor(
                    [[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=torch.float32
                ).reshape(-1, 4),
                "scores": torch.tensor(rng.uniform(0.1, 1.0, size=len(stack))),
                "labels": torch.tensor(labels, dtype=torch.int64),
                # probabilities, as eval Instances carry them
                "masks": torch.from_numpy(stack.astype(np.float32) * 0.9),
            }
        )
    categories = [{"id": i, "name": n} for i, n in zip(CATEGORY_IDS, NAMES, strict=True)]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def _reference(ground_truth: dict, detections: list[dict]) -> COCOeval:
    """pycocotools' segm evaluation on results built here straight from the masks."""
    results = []
    for image_id, detection in enumerate(detections, start=1):
        for mask, label, score in zip(
            detection["masks"].numpy() > 0.5,
            detection["labels"].tolist(),
            detection["scores"].tolist(),
            strict=True,
        ):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[label],
                    "segmentation": _rle(mask),
                    "score": score,
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {**ground_truth, "info": {}, "licenses": []}
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_segm_map_equals_pycocotools_cocoeval_segm(seed, backend):
    ground_truth, detections = _scene(seed)
    results = detections_to_coco(detections, range(1, 7), CATEGORY_IDS)
    got = evaluate_coco(ground_truth, results, backend=backend, iou_type="segm")
    want = _reference(ground_truth, detections)
    stats = [got.AP, got.AP50, got.AP75, got.APs, got.APm, got.APl]
    for value, expected in zip(stats, want.stats[:6], strict=True):
        if expected < 0:
            assert math.isnan(value)
        else:
            assert value == pytest.approx(expected, abs=1e-9)
    assert 0.05 < got.AP < 0.95  # partial overlaps: neither trivial nor perfect
    precision = want.eval["precision"]
    for k, name in enumerate(NAMES):
        column = precision[:, :, k, 0, -1]
        expected = column[column > -1].mean() if (column > -1).any() else math.nan
        assert got.per_class[name] == pytest.approx(expected, abs=1e-9, nan_ok=True)


def _one_object(box: list[float], segmentation: dict | None, mask: np.ndarray) -> tuple:
    """One image with one truth (``box`` xywh, optional segmentation) and one detection of
    that box with ``mask``: ``(ground_truth, results)``."""
    x, y, w, h = box
    annotation = {"id": 1, "image_id": 1, "category_id": 2, "bbox": box, "iscrowd": 0}
    annotation["area"] = float(w * h)
    if segmentation is not None:
        annotation["segmentation"] = segmentation
    ground_truth = {
        "images": [{"id": 1, "height": HEIGHT, "width": WIDTH}],
        "annotations": [annotation],
        "categories": [{"id": 2, "name": "disc"}],
    }
    detection = {
        "boxes": torch.tensor([[x, y, x + w, y + h]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([0]),
        "masks": torch.from_numpy(mask[None]),
    }
    return ground_truth, detections_to_coco([detection], [1], [2])


def test_segm_scores_masks_not_boxes():
    """A detection with the truth's exact box but a mask covering a quarter of the object has
    box AP 1 and mask AP 0."""
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[20:80, 40:120] = True
    quarter = np.zeros_like(mask)
    quarter[20:50, 40:80] = True
    quarter[79, 119] = True  # keeps the same tight box
    ground_truth, results = _one_object([40.0, 20.0, 80.0, 60.0], _rle(mask), quarter)
    assert mask_utils.toBbox(results[0]["segmentation"]).tolist() == [40, 20, 80, 60]
    assert pytest.approx(1.0) == evaluate_coco(ground_truth, results).AP
    assert evaluate_coco(ground_truth, results, iou_type="segm").AP == 0.0


def test_truth_without_segmentation_counts_as_its_box():
    box = np.zeros((HEIGHT, WIDTH), bool)
    box[10:50, 30:90] = True
    ground_truth, results = _one_object([30.0, 10.0, 60.0, 40.0], None, box)
    assert pytest.approx(1.0) == evaluate_coco(ground_truth, results, iou_type="segm").AP
    shrunk = np.zeros_like(box)
    shrunk[10:30, 30:90] = True  # IoU 0.5 with the box: a match at 0.50, not at 0.75
    _, results = _one_object([30.0, 10.0, 60.0, 40.0], None, shrunk)
    assert pytest.approx(1.0) == evaluate_coco(ground_truth, results, iou_type="segm").AP50
    assert evaluate_coco(ground_truth, results, iou_type="segm").AP75 == 0.0


def test_mask_rles_round_trip_and_errors():
    rng = np.random.default_rng(3)
    masks = rng.random((3, 17, 23)) > 0.6
    rles = mask_rles(masks)
    assert all(isinstance(r["counts"], str) and r["size"] == [17, 23] for r in rles)
    decoded = [mask_utils.decode({**r, "counts": r["counts"].encode()}) for r in rles]
    np.testing.assert_array_equal(np.array(decoded, dtype=bool), masks)
    assert mask_rles(np.zeros((0, 4, 4), bool)) == []
    detection = {
        "boxes": torch.zeros(2, 4),
        "scores": torch.ones(2),
        "labels": torch.zeros(2, dtype=torch.int64),
        "masks": torch.zeros(1, 4, 4),
    }
    with pytest.raises(DatasetError, match="1 masks for 2 boxes"):
        detections_to_coco([detection], [1], [2])
    results = [{"image_id": 1, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 1.0}]
    with pytest.raises(DatasetError, match="without 'segmentation'"):
        evaluate_coco({"images": [], "annotations": [], "categories": []}, results, iou_type="segm")
    with pytest.raises(DatasetError, match="iou_type 'keypoints'"):
        evaluate_coco({"images": [], "annotations": [], "categories": []}, [], iou_type="keypoints")


class _MaskedDataset(torch.utils.data.Dataset):
    """Two images (40x50 and 30x60 original pixels) padded into a 64x64 input, with ellipse
    masks; ``records`` hold the segmentations as RLE, as a COCO split's do."""

    def __init__(self) -> None:
        from cvkit.data.records import Records, Sample

        self.samples, self.masks = [], []
        for index, ((height, width), ellipses) in enumerate(
            [((40, 50), [(12, 15, 8, 10), (28, 35, 9, 12)]), ((30, 60), [(15, 30, 10, 20)])]
        ):
            ys, xs = np.mgrid[:height, :width]
            masks = np.array(
                [((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1 for cy, cx, ry, rx in ellipses]
            )
            boxes = np.array([mask_utils.toBbox(_rle(m)) for m in masks], np.float32)
            boxes[:, 2:] += boxes[:, :2]
            self.masks.append(masks)
            self.samples.append(
                Sample(
                    index + 1,
                    f"{index}.png",
                    height,
                    width,
                    image=np.zeros((height, width, 3), np.uint8),
                    boxes=boxes,
                    labels=np.arange(len(masks)) % 2,
                    iscrowd=np.zeros(len(masks), bool),
                    segmentations=[_rle(m) for m in masks],
                )
            )
        self.records = Records(self.samples, ["disc", "block"])
        self.category_ids = [1, 2]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from cvkit.geometry import Geometry
        from cvkit.structures import Target

        sample = self.samples[index]
        image = torch.full((3, 64, 64), float(index))
        geometry = Geometry((sample.height, sample.width), (1.0, 1.0))
        return image, Target(
            torch.from_numpy(sample.boxes), torch.from_numpy(sample.labels), geometry, index + 1
        )

    def coco_ground_truth(self) -> dict:
        from cvkit.data.formats.coco import coco_dict

        return coco_dict(self.records, include_segmentation=False)


class _MaskOracle(torch.nn.Module):
    """Eval output: the truth's boxes, and its masks (probabilities in the padded input) shifted
    right by ``shift`` pixels."""

    def __init__(self, dataset: _MaskedDataset, shift: int) -> None:
        super().__init__()
        self.dataset, self.shift = dataset, shift

    def forward(self, images):
        from cvkit.structures import Instances

        outputs = []
        for image in images:
            index = int(image[0, 0, 0])
            sample, masks = self.dataset.samples[index], self.dataset.masks[index]
            padded = torch.zeros(len(masks), 64, 64)
            padded[:, : sample.height, : sample.width] = torch.from_numpy(masks).float()
            padded = torch.roll(padded, self.shift, dims=2)
            outputs.append(
                Instances(
                    torch.from_numpy(sample.boxes),
                    torch.linspace(0.9, 0.5, len(masks)),
                    torch.from_numpy(sample.labels),
                    (64, 64),
                    padded,
                )
            )
        return outputs


@pytest.mark.parametrize(("shift", "segm_map"), [(0, 1.0), (8, None)])
def test_detect_task_reports_segm_metrics_next_to_bbox(shift, segm_map):
    from cvkit.config import load_config
    from cvkit.engine.tasks import get_task

    dataset = _MaskedDataset()
    task = get_task("detect")(load_config(overrides=["device=cpu"]))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=2,
        collate_fn=lambda batch: (torch.stack([b[0] for b in batch]), [b[1] for b in batch]),
    )
    metrics = task.evaluate(_MaskOracle(dataset, shift), loader, torch.device("cpu"))
    assert metrics["mAP"] == pytest.approx(1.0)
    if segm_map is None:  # shifted masks: boxes still perfect, masks only partly right
        assert 0 < metrics["segm_mAP"] < 0.5
    else:
        assert metrics["segm_mAP"] == pytest.approx(segm_map)
    assert {"segm_mAP50", "segm_mAP75", "segm_AP/disc", "segm_AP/block"} <= set(metrics)
    assert "segm_mAP " in task.describe(metrics)
