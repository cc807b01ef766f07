"""Stages the verbs of ``onnx_nfi.api`` share, wired from the layers below.

``models`` opens a model with its preprocessing (and re-opens a stored one), ``features`` turns a
scan's top-N into NFs and selectivity indexes, ``probe`` chooses and scores the database's shared
probe set. Nothing below this package imports it.
"""
