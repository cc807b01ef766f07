"""The neuron browser: per-model, per-layer and per-neuron HTML pages over the database.

``build`` writes them as a static site (``onnx-nfi report``); ``onnx_nfi.report.serve`` serves the
same pages from the live database with search (``onnx-nfi serve``). ``data`` reads, ``pages``
renders (Jinja2 templates and the static assets in this package).
"""
