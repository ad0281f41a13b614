"""Session fixtures of the scale tests: the toy detector, an image folder with bad files, and
one local Ray cluster for the whole session (Ray starts slowly on 2 cores: one ``ray.init``)."""

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from scale_toys import write_colour_detector, write_images


@pytest.fixture(scope="session")
def detector_model(tmp_path_factory) -> Path:
    return write_colour_detector(tmp_path_factory.mktemp("model") / "colour.onnx")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """12 good images in two folders (one nested), a corrupt, a truncated and an empty file."""
    folder = tmp_path_factory.mktemp("images")
    write_images(folder, 8)
    write_images(folder / "nested", 4, seed=1)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    noise = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    jpeg = cv2.imencode(".jpg", noise)[1].tobytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "empty.png").write_bytes(b"")
    return folder


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster (2 CPUs, loopback, no dashboard, small object store)."""
    pytest.importorskip("ray")
    import ray
    import ray.data

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=80 * 1024**2,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
