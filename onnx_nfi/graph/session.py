"""onnxruntime sessions: provider choice and a small ``Runner`` used by every pass.

CUDA is used when the installed onnxruntime offers it (the ``gpu`` extra installs onnxruntime-gpu);
there, inputs and outputs go through IO binding so the only device-to-host copy is the small
reduced outputs. The provider actually used is recorded with each run.
"""

from __future__ import annotations

import importlib.metadata
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
import onnx
import onnxruntime as ort

from onnx_nfi.config import DEFAULT_THREADS
from onnx_nfi.errors import NfiError
from onnx_nfi.graph.load import EXTERNAL_DATA_DIR

log = logging.getLogger(__name__)

PROVIDERS = ("auto", "cpu", "cuda")


def available_providers() -> list[str]:
    """What this onnxruntime build can run on."""
    return list(ort.get_available_providers())


def check_runtime_install() -> None:
    """Warn when CPU and GPU builds of onnxruntime or faiss are both installed: they overwrite each other's files."""
    names = {d.metadata["Name"].lower() for d in importlib.metadata.distributions() if d.metadata["Name"]}
    clashes = [
        f"{cpu} and {gpu}"
        for cpu, gpu in (("onnxruntime", "onnxruntime-gpu"), ("faiss-cpu", "faiss-gpu-cu12"))
        if cpu in names and gpu in names
    ]
    if clashes:
        warnings.warn(
            f"both {'; '.join(clashes)} are installed; uninstall them and reinstall one extra "
            "(pip install 'onnx-nfi[cpu]' or 'onnx-nfi[gpu]')",
            RuntimeWarning,
            stacklevel=2,
        )


def _providers(choice: str) -> list[str]:
    available = available_providers()
    if choice not in PROVIDERS:
        raise NfiError(f"unknown provider {choice!r}; use one of {', '.join(PROVIDERS)}")
    if choice == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise NfiError(
                "the CUDA provider is not available in this onnxruntime; install the GPU extra "
                "(pip install 'onnx-nfi[gpu]') or use --provider cpu"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if choice == "auto" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


#: Intra-op threads of the sessions made without a count of their own (0: one per core): the run's,
#: inside ``using_threads``; else the default of ``--threads``.
_THREADS: ContextVar[int] = ContextVar("onnxruntime_threads", default=DEFAULT_THREADS)


@contextmanager
def using_threads(threads: int) -> Iterator[None]:
    """Inside, sessions (and NF crop workers, ``session_threads``) use ``threads`` threads, 0 one per
    core: a stage runs under its run's ``RunSettings.threads`` (a Ray task, its layout's)."""
    token = _THREADS.set(threads)
    try:
        yield
    finally:
        _THREADS.reset(token)


def session_threads() -> int:
    """The thread count of the ``using_threads`` around this call (else the default); 0: one per core."""
    return _THREADS.get()


def session_options(proto: onnx.ModelProto, threads: int | None = None, *, spinning: bool = True) -> ort.SessionOptions:
    """Options every session of ours uses; external-data models get the folder of their weights.

    Without ``spinning`` the runtime's threads sleep between parallel sections instead of
    busy-waiting for the next one: for a session that runs beside other busy threads (the scan
    decodes images and keeps its statistics while it infers), whose cores the spinning took.

    The memory pattern is off: with it, every run takes one block for all planned tensors
    straight from the system allocator and returns it afterwards, so a graph that keeps many
    maps alive (the scan's reductions, every map as an output) faults its pages in again on
    each run (2,558 page faults and 4.6 ms of kernel time an image for instrumented Lite0, peak
    memory 3.0 instead of 1.7 GB); without it the arena keeps and reuses its blocks.
    """
    options = ort.SessionOptions()
    options.enable_mem_pattern = False
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    threads = threads or _THREADS.get()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # unused initializers of pruned nodes are expected, not news
    folder = next((p.value for p in proto.metadata_props if p.key == EXTERNAL_DATA_DIR), None)
    if folder:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    return options


class Runner:
    """One inference session over an (instrumented) model; ``run`` maps a batch to named outputs."""

    def __init__(
        self, proto: onnx.ModelProto, provider: str = "auto", threads: int | None = None, *, spinning: bool = True
    ) -> None:
        options = session_options(proto, threads, spinning=spinning)
        self.session = ort.InferenceSession(proto.SerializeToString(), options, providers=_providers(provider))
        self.provider = self.session.get_providers()[0]
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._binding = self.session.io_binding() if self.provider == "CUDAExecutionProvider" else None

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by name for one input batch."""
        if self._binding is None:
            values = self.session.run(self.output_names, {self.input_name: batch})
            return dict(zip(self.output_names, values))
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        binding.bind_cpu_input(self.input_name, batch)
        for name in self.output_names:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu()))
