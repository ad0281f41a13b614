"""An onnxruntime session around one exported cvkit model: provider choice and checked runs.

``providers`` picks where the graph runs:

- ``"auto"``: CUDA when the CUDA provider is installed and an NVIDIA device is present, else
  the CPU (with a warning when a device is present but CUDA does not start). The provider that
  actually runs is logged and exposed as :attr:`OnnxModel.provider`.
- ``"cpu"``: the CPU only.
- ``"cuda"``: CUDA, or a :class:`ProviderError` when the CUDA provider did not start (it never
  falls back to the CPU silently).
- ``"tensorrt"``: TensorRT with CUDA and the CPU behind it for unsupported nodes; a
  :class:`ProviderError` when TensorRT did not start.
- a list of onnxruntime provider names, used as given; the first one must start.

onnxruntime-gpu lists the CUDA and TensorRT providers even on machines without a GPU, so the
providers are checked after the session is created (``session.get_providers()``), not before.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cvkit.logs import get_logger
from cvkit.runtime.errors import InputError, ModelFileError, ProviderError
from cvkit.runtime.metadata import ModelMetadata

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
_NAMED = {"cpu": [CPU], "cuda": [CUDA, CPU], "tensorrt": [TENSORRT, CUDA, CPU]}
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}

logger = get_logger("runtime")


def _nvidia_device_present() -> bool:
    """Cheap check for a GPU without CUDA libraries: device nodes on Linux, else assume yes."""
    if not sys.platform.startswith("linux"):
        return True
    return Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists()


def requested_providers(providers: str | Sequence[str]) -> list[str]:
    """The onnxruntime provider list for a ``providers`` argument (see the module docstring).

    Raises:
        ProviderError: an unknown name, or a provider that this onnxruntime build lacks.
    """
    available = ort.get_available_providers()
    if isinstance(providers, str):
        key = providers.lower()
        if key == "auto":
            use_cuda = CUDA in available and _nvidia_device_present()
            return [CUDA, CPU] if use_cuda else [CPU]
        if key not in _NAMED:
            raise ProviderError(
                f"providers={providers!r}: expected 'auto', 'cpu', 'cuda', 'tensorrt' or a "
                "list of onnxruntime provider names"
            )
        wanted = _NAMED[key]
    else:
        wanted = list(providers)
    missing = [name for name in wanted if name not in available]
    if missing:
        raise ProviderError(
            f"providers {missing} are not in this onnxruntime build (available: {available})"
        )
    return wanted


def _preload_cuda_libraries() -> None:
    """Let onnxruntime find CUDA/cuDNN from pip's nvidia-* packages (as torch ships them)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except (OSError, RuntimeError) as exc:
            logger.debug("onnxruntime.preload_dlls failed: %s", exc)


class OnnxModel:
    """One exported model: its onnxruntime session, metadata and input checks.

    Args:
        path: ``.onnx`` file written by ``cvkit export``.
        providers: see the module docstring.
        threads: intra-op threads of the CPU provider (None: onnxruntime's default).
        spin: let those threads spin-wait for work after each run (onnxruntime's default):
            the next run starts sooner, but the spinning takes the cores from other work in the
            process (a server's HTTP handling, decoding) and from other sessions.

    Raises:
        ModelFileError: missing, non-ONNX or corrupt file, or one without cvkit metadata.
        ProviderError: the provider asked for did not start.
    """

    def __init__(
        self,
        path: str | Path,
        providers: str | Sequence[str] = "auto",
        threads: int | None = None,
        spin: bool = True,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: model file not found")
        wanted = requested_providers(providers)
        if CUDA in wanted:
            _preload_cuda_libraries()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise ModelFileError(
                f"{self.path}: not a loadable ONNX model: {str(exc).splitlines()[0]}"
            ) from None
        self.providers: list[str] = self.session.get_providers()
        if wanted[0] != CPU and self.providers[0] != wanted[0]:
            message = (
                f"{self.path}: asked for {wanted[0]} but onnxruntime runs {self.providers} "
                "(is the GPU visible and are CUDA/cuDNN libraries installed?)"
            )
            if providers != "auto":
                raise ProviderError(message)
            logger.warning("%s; providers='auto' continues on the CPU", message)
        logger.info("%s runs on %s", self.path.name, self.providers[0])
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = ModelMetadata.from_props(props, str(self.path))
        self._input, *extra = self.session.get_inputs()
        for graph_input in (self._input, *extra):
            if graph_input.type not in _DTYPES:
                raise ModelFileError(
                    f"{self.path}: unsupported type {graph_input.type} "
                    f"of input {graph_input.name!r}"
                )
        self.input_dtype = _DTYPES[self._input.type]
        self.extra_inputs: dict[str, np.dtype] = {
            graph_input.name: np.dtype(_DTYPES[graph_input.type]) for graph_input in extra
        }
        self.output_names = [output.name for output in self.session.get_outputs()]

    @property
    def provider(self) -> str:
        """The execution provider that runs the graph (first of ``session.get_providers()``)."""
        return self.providers[0]

    @property
    def input_shape(self) -> list[int | str | None]:
        """``[B, 3, H, W]`` as the graph declares it; dynamic axes are names or None."""
        return list(self._input.shape)

    def check_batch(self, batch: np.ndarray) -> None:
        """Raise :class:`InputError` unless ``batch`` fits the graph's input shape and dtype."""
        if not isinstance(batch, np.ndarray):
            raise InputError(f"model input must be a numpy array, got {type(batch).__name__}")
        if batch.dtype != self.input_dtype:
            raise InputError(
                f"model input dtype must be {np.dtype(self.input_dtype).name}, got {batch.dtype}"
            )
        expected = self.input_shape
        if batch.ndim != len(expected):
            raise InputError(
                f"model input must have shape {expected} (B, 3, H, W), got {list(batch.shape)}"
            )
        for axis, (size, want) in enumerate(zip(batch.shape, expected, strict=True)):
            if isinstance(want, int) and want > 0 and size != want:
                raise InputError(
                    f"model input must have shape {expected}, got {list(batch.shape)} "
                    f"(axis {axis} is {size}, the graph needs {want})"
                )

    def run(
        self, batch: np.ndarray, extra: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the graph on a pre-processed batch ``[B, 3, H, W]``; outputs by name.

        ``extra`` holds the graph's inputs after the images (:attr:`extra_inputs`, e.g. Fast
        R-CNN's ``proposals [B, P, 4]``), by name; a graph of the images alone takes none.

        Raises:
            InputError: a bad batch, or ``extra`` lacks a graph input or names one the graph
                does not have.
        """
        self.check_batch(batch)
        extra = dict(extra or {})
        if set(extra) != set(self.extra_inputs):
            raise InputError(
                f"{self.path}: the graph takes {sorted(self.extra_inputs) or 'no inputs'} beside "
                f"the images, got {sorted(extra) or 'none'}"
            )
        feeds = {self._input.name: batch}
        for name, dtype in self.extra_inputs.items():
            feeds[name] = np.ascontiguousarray(extra[name], dtype=dtype)
        outputs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outputs, strict=True))
