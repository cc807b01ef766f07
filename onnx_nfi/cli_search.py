"""``onnx-nfi`` commands for the search verbs; registered on ``onnx_nfi.cli.app`` when imported."""

from __future__ import annotations
