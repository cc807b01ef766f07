"""The saturation rule's extra reduction only where it can change a result (docs/method.md §2).

For a ReLU or Clip layer the rule reads the pre-activation map ``P`` besides the layer's own map
``A`` (its maximum breaks ties, its first maximum locates the image). Where the score ``s = max A``
lies strictly between the activation's flat parts (``lo < s < hi``), ``max P = s`` and the first
maximum of ``P`` is the first maximum of ``A``, bit for bit: the plain reduction of ``A`` gives the
same key and location. Only a score at a bound (a ReLU6 unit at 6, any unit at 0) needs ``P``, and
only if it can enter the top-N.

So the scan starts with the exact graph and counts, per such layer, the scores it has seen at the
upper bound. Once a layer's top-N rows are all full with scores above the lower bound (a score at
``lo`` can no longer enter: the last kept score only grows) and none of its scores reached ``hi``,
the layer can take the plain reduction; the scan switches once to a graph that does so for every
such layer (a Clip then stays fused into its convolution, without the identity pass). Every batch
run on that graph is checked: if one of those layers shows a score outside ``(lo, hi)`` that could
enter its top-N, the batch is run again on the exact graph, which serves the rest of the scan. The
statistics are therefore those of the exact rule, whatever the images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from onnx_nfi.graph.instrument import flat_bounds, instrument
from onnx_nfi.graph.layers import Layer
from onnx_nfi.graph.load import LoadedModel
from onnx_nfi.graph.session import Runner
from onnx_nfi.scan.topn import TopN


@dataclass(frozen=True)
class Ran:
    """One batch's outputs and the layers whose pre-activation reductions the graph left out."""

    outputs: dict[str, np.ndarray]
    plain: frozenset[str]


class RuleRunner:
    """Runs batches on the exact graph, or on one without the pre-activation reductions where they cannot matter."""

    def __init__(
        self, model: LoadedModel, layers: Sequence[Layer], provider: str, *, keep_model_outputs: bool = False
    ) -> None:
        self.model, self.layers, self.provider_choice = model, list(layers), provider
        self.keep_model_outputs = keep_model_outputs
        proto, self.outputs = instrument(model, self.layers, keep_model_outputs=keep_model_outputs)
        runner = Runner(proto, provider, spinning=False)  # the decode threads and the statistics need the cores
        self.provider = runner.provider
        self.current: tuple[Runner, frozenset[str]] = (runner, frozenset())  # swapped whole: read by two threads
        self.bounds = {
            layer.tensor: b for layer in self.layers
            if layer.score_from_pre and (b := flat_bounds(model, layer)) is not None
        }
        self.at_upper = dict.fromkeys(self.bounds, 0)  # scores seen at the upper bound, per layer
        self.switched = False  # the plain graph is tried once per scan

    def run(self, tensor: np.ndarray) -> Ran:
        """One batch on the graph in use now (the inference thread calls this)."""
        runner, plain = self.current
        return Ran(_detached(runner.run(tensor)), plain)

    def exact(self, tensor: np.ndarray, ran: Ran, topns: dict[str, TopN]) -> dict[str, np.ndarray]:
        """The batch's outputs as the exact graph gives them: each plain layer's key is its score,
        unless a score could change the result there; then the batch runs again on the exact graph."""
        if ran.plain and any(self._needs_pre(ran.outputs[self.outputs.max[t]], t, topns[t]) for t in ran.plain):
            self._use(frozenset())
            return _detached(self.current[0].run(tensor))
        result = dict(ran.outputs)
        for tensor_name in ran.plain:
            result[self.outputs.key[tensor_name]] = result[self.outputs.max[tensor_name]]
        for tensor_name, (_, hi) in self.bounds.items():
            if tensor_name not in ran.plain and not math.isinf(hi):
                self.at_upper[tensor_name] += int(np.count_nonzero(result[self.outputs.max[tensor_name]] >= hi))
        return result

    def consider(self, topns: dict[str, TopN]) -> None:
        """After the statistics took a batch: move the layers whose results the plain reduction cannot change."""
        if self.switched:
            return
        ready = frozenset(t for t in self.bounds if self.at_upper[t] == 0 and self._settled(t, topns[t]))
        if ready:
            self.switched = True
            self._use(ready)

    def _settled(self, tensor: str, topn: TopN) -> bool:
        """Every row full, its last score above the lower bound: no score at ``lo`` can enter any more."""
        return bool(topn.count() == topn.n and np.all(topn.scores[:, -1] > self.bounds[tensor][0]))

    def _needs_pre(self, scores: np.ndarray, tensor: str, topn: TopN) -> bool:
        """Whether a score ``[B, C]`` outside ``(lo, hi)`` could enter the top-N (it ties or beats a row's last)."""
        lo, hi = self.bounds[tensor]
        outside = ~((scores > lo) & (scores < hi))
        return bool(np.any(outside & ~(scores < topn.scores[:, -1])))

    def _use(self, plain: frozenset[str]) -> None:
        """Build and switch to the graph that reduces ``plain`` layers without their pre-activation."""
        if plain == self.current[1]:
            return
        layers = [replace(layer, pre_activation=None, score_from_pre=False) if layer.tensor in plain else layer
                  for layer in self.layers]
        proto = instrument(self.model, layers, keep_model_outputs=self.keep_model_outputs)[0]
        # the old session goes once no batch runs on it, before the new one's first run fills its arena
        self.current = (Runner(proto, self.provider_choice, spinning=False), plain)



def _detached(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Copies of a run's outputs, so the runtime's own buffers go back to its arena at once.

    onnxruntime hands its output buffers to NumPy; kept while the next batch runs (the statistics
    of batch k overlap the inference of batch k+1), they split the arena's free space, which then
    grows batch after batch (+0.45 GB over Lite0's first ten batches). The copy is ~0.3 MB an image.
    """
    return {name: np.array(value, copy=True) for name, value in outputs.items()}
