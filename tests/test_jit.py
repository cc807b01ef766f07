"""The numba helper: cached where a cache can be written, compiled in memory where it cannot."""

from __future__ import annotations

from onnx_nfi.jit import compiled


def test_compiled_without_a_cache_location_still_compiles() -> None:
    """A function numba cannot cache (here: defined from a string, no source file) is compiled anyway."""
    namespace: dict = {}
    exec(compile("def add_one(x):\n    return x + 1\n", "<string>", "exec"), namespace)
    fn = compiled(nogil=True)(namespace["add_one"])
    assert type(fn._cache).__name__ == "NullCache"  # in memory only
    assert fn(41) == 42


def test_compiled_functions_of_the_package_are_cached_on_disk() -> None:
    from onnx_nfi.neurons import nf_kernel
    from onnx_nfi.scan import topn

    for fn in (nf_kernel._add_weighted_crops, topn._insert_batch):
        assert type(fn._cache).__name__ == "FunctionCache", fn
