"""``python -m onnx_nfi``: the same as the ``onnx-nfi`` command."""

from onnx_nfi.cli import main

main()
