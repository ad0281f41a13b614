"""Image files as users have them, not as the synthetic dataset writes them.

Sideways phone photos (EXIF orientation), gray, palette, 16-bit, CMYK, progressive and cut-off
files go through the reader (:func:`cvkit.images.read_image`), the header size the dataset
check trusts (:func:`cvkit.data.records.read_image_size`), a COCO folder into training targets
and ``cvkit.load(...).predict``. References: Pillow's own decode turned upright with
``ImageOps.exif_transpose``, and boxes computed by hand.
"""

import json
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageOps

from cvkit.config import load_config
from cvkit.data.formats.yolo import read_yolo
from cvkit.data.loader import build_dataset
from cvkit.data.records import read_image_size
from cvkit.data.transforms import SampleTransform
from cvkit.errors import DatasetError, ImageError
from cvkit.geometry import fit
from cvkit.images import read_image

HEIGHT, WIDTH = 24, 40


def _pattern() -> np.ndarray:
    """RGB ``[24, 40, 3]`` whose every rotation and mirror differs: gradients and a red corner."""
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[..., 0] = np.linspace(0, 255, WIDTH, dtype=np.uint8)[None]
    image[..., 1] = np.linspace(0, 255, HEIGHT, dtype=np.uint8)[:, None]
    image[:6, :10] = (255, 0, 0)
    return image


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _save_photo(path: Path, orientation: int) -> Path:
    """The pattern as stored by a camera held sideways: pixels as shot plus the EXIF tag."""
    lossless = {".webp": {"lossless": True}, ".jpg": {"quality": 95}}.get(path.suffix, {})
    Image.fromarray(_pattern()).save(path, exif=_exif(orientation), **lossless)
    return path


def _pillow_upright(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def _assert_pixels(got: np.ndarray, expected: np.ndarray, tolerance: int) -> None:
    assert got.dtype == np.uint8 and got.shape == expected.shape
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= tolerance


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tiff"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_the_photo_upright_as_pillow_does(tmp_path, suffix, orientation):
    """OpenCV 5.1's ``imread`` could not read TIFFs with orientations 5-8; the header size
    (what the training check compares with the annotation) ignored the orientation."""
    path = _save_photo(tmp_path / f"photo{suffix}", orientation)
    expected = _pillow_upright(path)
    assert expected.shape[:2] == ((WIDTH, HEIGHT) if orientation >= 5 else (HEIGHT, WIDTH))
    _assert_pixels(read_image(path), expected, 2 if suffix == ".jpg" else 0)
    assert read_image_size(path) == expected.shape[:2]


def test_a_corrupt_exif_block_leaves_the_photo_as_stored(tmp_path):
    """The decoder ignores an EXIF block it cannot parse; the header size must not refuse it."""
    path = tmp_path / "odd camera.jpg"
    Image.fromarray(_pattern()).save(path, quality=95, exif=b"Exif\x00\x00not a TIFF header")
    with Image.open(path) as image:
        assert image.size == (WIDTH, HEIGHT)
        expected = np.asarray(image.convert("RGB"))
    _assert_pixels(read_image(path), expected, 2)
    assert read_image_size(path) == (HEIGHT, WIDTH)


def _save(mode: str, **options):
    def write(path: Path) -> None:
        image = Image.fromarray(_pattern())
        if mode == "RGBA":
            image.putalpha(Image.fromarray(np.full((HEIGHT, WIDTH), 90, np.uint8)))
        elif mode == "P":
            image = image.quantize(16)
        elif mode != "RGB":
            image = image.convert(mode)
        image.save(path, **options)

    return write


def _sized(height: int, width: int):
    def write(path: Path) -> None:
        rng = np.random.default_rng(height * width)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)).save(path)

    return write


FILES = {
    "gray.jpg": (_save("L", quality=95), 2),
    "gray.png": (_save("L"), 0),
    "palette with transparency.png": (_save("P", transparency=0), 0),
    "rgba.png": (_save("RGBA"), 0),
    "la.png": (_save("LA"), 0),
    "cmyk.jpg": (_save("CMYK", quality=95), 2),
    "progressive.jpg": (_save("RGB", quality=95, progressive=True), 2),
    "image.webp": (_save("RGB", lossless=True), 0),
    "image.bmp": (_save("RGB"), 0),
    "image.tiff": (_save("RGB", compression="tiff_lzw"), 0),
    "one pixel.png": (_sized(1, 1), 0),
    "three by two.png": (_sized(2, 3), 0),
    "wide.png": (_sized(50, 4000), 0),
    "my photos/été 写真/café ø.jpg": (_save("RGB", quality=95), 2),
}


@pytest.mark.parametrize("name", list(FILES))
def test_every_mode_reads_as_pillow_converts_it_to_rgb(tmp_path, name):
    """Alpha is dropped (Pillow's ``convert("RGB")`` drops it too), gray repeated."""
    write, tolerance = FILES[name]
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path)
    expected = _pillow_upright(path)
    _assert_pixels(read_image(path), expected, tolerance)
    _assert_pixels(read_image(str(path)), expected, tolerance)
    assert read_image_size(path) == expected.shape[:2]


def test_16_bit_gray_keeps_its_top_8_bits(tmp_path):
    values = np.linspace(0, 65535, HEIGHT * WIDTH).astype(np.uint16).reshape(HEIGHT, WIDTH)
    Image.fromarray(values).save(tmp_path / "depth.png")  # mode I;16
    expected = np.repeat((values >> 8).astype(np.uint8)[..., None], 3, axis=2)
    _assert_pixels(read_image(tmp_path / "depth.png"), expected, 0)
    assert read_image_size(tmp_path / "depth.png") == (HEIGHT, WIDTH)


def _encoded(suffix: str, **options) -> bytes:
    """A noise image encoded in memory: its pixel data fills nearly all of the file."""
    noise = np.random.default_rng(5).integers(0, 256, (64, 64, 3), np.uint8)
    buffer = BytesIO()
    Image.fromarray(noise).save(buffer, format=Image.registered_extensions()[suffix], **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "suffix, options",
    [(".jpg", {"quality": 95}), (".jpg", {"quality": 95, "progressive": True}), (".png", {})],
)
@pytest.mark.parametrize("kept", [0.1, 0.5, 0.95])
def test_a_cut_off_file_is_an_error_not_garbage(tmp_path, suffix, options, kept):
    """``cv2.imread`` returned a cut JPEG at full size, grey below the cut, with a warning."""
    data = _encoded(suffix, **options)
    cut = data[: int(len(data) * kept)]
    path = tmp_path / f"download{suffix}"
    path.write_bytes(cut)
    with pytest.raises(OSError), Image.open(path) as image:  # the reference refuses it too
        image.load()
    with pytest.raises(ImageError, match=rf"download\{suffix}: not a readable image"):
        read_image(path)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jpg", b"", "empty file"),
        ("notes.jpg", b"hello, not an image\n", r"not a readable image \(20 bytes\)"),
    ],
)
def test_files_that_are_not_images_are_named(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageError, match=rf"{name}: {message}"):
        read_image(tmp_path / name)


def test_a_folder_is_named(tmp_path):
    with pytest.raises(ImageError, match=r"cannot read the file"):
        read_image(tmp_path)


def test_yolo_labels_of_a_sideways_photo_scale_by_its_upright_size(tmp_path):
    """Labels are normalized to the image as shown (Ultralytics reads it upright, like us)."""
    images, labels = tmp_path / "images" / "train", tmp_path / "labels" / "train"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    _save_photo(images / "phone.jpg", 6)  # stored 40 wide, 24 high; upright 24 x 40
    (labels / "phone.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    data = {"path": str(tmp_path), "train": "images/train", "names": ["cup"]}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(data))
    (sample,) = read_yolo(tmp_path / "data.yaml").samples
    assert (
        (sample.height, sample.width) == (40, 24) == _pillow_upright(images / "phone.jpg").shape[:2]
    )
    # centre (12, 20), 6 wide, 20 high
    np.testing.assert_allclose(sample.boxes, [[9, 10, 15, 30]], atol=1e-4)


def _coco_folder(tmp_path: Path, photo_size: tuple[int, int]) -> Path:
    """A COCO split with awkward but valid annotations: ids 3/7/90, a crowd region, a box
    sticking out, an image without objects (non-ASCII name) and a sideways photo annotated at
    ``photo_size`` (width, height)."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(_pattern()).save(folder / "a.jpg", quality=95)
    Image.fromarray(_pattern()).save(folder / "b.png")
    Image.fromarray(_pattern()).save(folder / "vide é.png")
    _save_photo(folder / "phone.jpg", 6)
    size = {"width": WIDTH, "height": HEIGHT}
    images = [
        {"id": 10, "file_name": "a.jpg", **size},
        {"id": 20, "file_name": "b.png", **size},
        {"id": 30, "file_name": "vide é.png", **size},
        {"id": 40, "file_name": "phone.jpg", "width": photo_size[0], "height": photo_size[1]},
    ]
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [10, 5, 20, 10], "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 90, "bbox": [0, 0, 40, 24], "iscrowd": 1},
        {"id": 3, "image_id": 20, "category_id": 3, "bbox": [30, 16, 20, 20], "iscrowd": 0},
        {"id": 4, "image_id": 40, "category_id": 90, "bbox": [2, 30, 10, 8], "iscrowd": 0},
    ]
    categories = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}, {"id": 90, "name": "n"}]
    path = tmp_path / "instances_train.json"
    payload = {"images": images, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


def _train_split(json_path: Path, *settings: str):
    config = load_config(
        None,
        [
            f"data.train.path={json_path}",
            "data.image_size=64",
            "data.augment=[]",
            "data.cache=off",
            "data.workers=0",
            *settings,
        ],
    )
    return build_dataset(config.data, "train", "detect")


def test_coco_targets_of_awkward_annotations_by_hand(tmp_path):
    """Letterbox to 64: 40x24 images scale by 1.6, the upright 24x40 photo too."""
    dataset = _train_split(_coco_folder(tmp_path, (HEIGHT, WIDTH)))
    targets = {target.image_id: (image, target) for image, target in dataset}
    assert sorted(targets) == [10, 20, 30, 40]
    expected = {
        10: ([[16, 8, 48, 24]], [1]),  # id 7 -> label 1; the crowd region is left out
        20: ([[48, 25.6, 64, 38.4]], [0]),  # clipped to the 40x24 image, not the padding
        30: (np.zeros((0, 4)), []),
        40: ([[3.2, 48, 19.2, 60.8]], [2]),  # in the upright photo's pixels
    }
    for image_id, (boxes, labels) in expected.items():
        image, target = targets[image_id]
        np.testing.assert_allclose(target.boxes.numpy().reshape(-1, 4), boxes, atol=1e-4)
        assert target.labels.tolist() == labels
    image, target = targets[40]
    assert target.geometry.orig_size == (WIDTH, HEIGHT)  # upright: 40 high, 24 wide
    upright, _ = fit(_pillow_upright(tmp_path / "images" / "phone.jpg"), (64, 64), "letterbox")
    _assert_pixels(image.permute(1, 2, 0).numpy(), upright, 2)


def test_coco_photo_annotated_at_its_stored_size_is_refused_by_the_training_check(tmp_path):
    """Annotated 40x24 (as stored) but shown 24x40: the boxes would land on the wrong pixels."""
    with pytest.raises(
        DatasetError,
        match=r"phone\.jpg: file 24x40, annotated 40x24 \(stored 40x24 with EXIF orientation "
        r"[5-8], which cvkit applies as photo viewers do: the size and boxes must be those of "
        r"the upright image",
    ):
        _train_split(_coco_folder(tmp_path, (WIDTH, HEIGHT)))


def test_coco_image_missing_on_disk_is_named_and_skipping_keeps_every_valid_sample(tmp_path):
    json_path = _coco_folder(tmp_path, (HEIGHT, WIDTH))
    data = json.loads(json_path.read_text(encoding="utf-8"))
    data["images"].append({"id": 50, "file_name": "gone.jpg", "width": 8, "height": 8})
    json_path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DatasetError, match=r"missing image file[\s\S]*gone\.jpg"):
        _train_split(json_path)
    kept = _train_split(json_path, "data.skip_invalid=true")
    assert [s.image_id for s in kept.records.samples] == [10, 20, 30, 40]


@pytest.mark.parametrize(
    "policy, box", [("letterbox", [48, 25.6, 64, 38.4]), ("resize", [48, 42.6667, 64, 64])]
)
def test_fit_clips_boxes_to_the_image_before_scaling(policy, box):
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    out = SampleTransform(None, 64, policy)(image, np.array([[30, 16, 50, 36]]), np.array([0]))
    np.testing.assert_allclose(out.boxes, [box], atol=1e-3)


@pytest.fixture(scope="module")
def tiny_ssd(tmp_path_factory):
    """A seeded, untrained tiny SSD checkpoint (64 px input) and its ONNX export."""
    import torch

    from cvkit.config import config_to_dict
    from cvkit.engine.checkpoint import save_checkpoint
    from cvkit.export.commands import export_checkpoint
    from cvkit.models.build import build_model

    settings = ["model.backbone=resnet18_tiny", "data.image_size=64", "model.ssd.extra_channels=16"]
    config = load_config(None, [*settings, "eval.score_threshold=0.2"])
    torch.manual_seed(0)
    model = build_model(config, 3).eval()
    checkpoint = {"model": model.state_dict(), "config": config_to_dict(config), "ema": None}
    weights = save_checkpoint(
        {**checkpoint, "classes": ["cat", "dog", "bird"]},
        tmp_path_factory.mktemp("ssd") / "ssd.pt",
    )
    return weights, export_checkpoint(weights).path


@pytest.mark.parametrize("name", ["phone.jpg", "scan.tiff"])
@pytest.mark.parametrize("model", ["pt", "onnx"])
def test_predict_on_a_sideways_photo_answers_in_upright_pixels(tmp_path, tiny_ssd, name, model):
    import cvkit

    path = _save_photo(tmp_path / name, 8 if name.endswith(".tiff") else 6)
    predictor = cvkit.load(tiny_ssd[0] if model == "pt" else tiny_ssd[1], "cpu")
    upright = _pillow_upright(path)
    got, expected = predictor.predict(path), predictor.predict(upright)
    upright_height, upright_width = WIDTH, HEIGHT
    assert got.orig_size == expected.orig_size == (upright_height, upright_width)
    assert len(got) == len(expected) > 0 and got.labels.tolist() == expected.labels.tolist()
    np.testing.assert_allclose(got.boxes, expected.boxes, atol=0.5)
    assert got.boxes.min() >= 0 and got.boxes[:, [0, 2]].max() <= upright_width
    assert got.boxes[:, [1, 3]].max() <= upright_height
    (tmp_path / "cut.jpg").write_bytes(_encoded(".jpg", quality=95)[:300])
    with pytest.raises(ImageError, match=r"cut\.jpg: not a readable image"):
        predictor.predict(tmp_path / "cut.jpg")
