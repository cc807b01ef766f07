"""The one way to name a neuron and a layer: ``MODEL:LAYER:UNIT`` and ``MODEL:LAYER``.

Commands, messages and picture titles all write a neuron through ``NeuronRef`` so it reads the same
everywhere; ``store.neuron_ref.resolve_neuron`` finds it in the database with one error text.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx_nfi.errors import SearchError


@dataclass(frozen=True)
class LayerRef:
    """A layer of a model, by alias or tensor name."""

    model: str
    layer: str

    def __str__(self) -> str:
        return f"{self.model}:{self.layer}"


@dataclass(frozen=True)
class NeuronRef:
    """One unit (channel) of a layer; ``str`` gives ``MODEL:LAYER:UNIT``."""

    model: str
    layer: str
    unit: int

    @classmethod
    def parse(cls, text: str) -> NeuronRef:
        """``MODEL:LAYER:UNIT`` (LAYER: an alias or a tensor name, which may itself contain ':')."""
        parts = text.split(":")
        unit = parts[-1].strip()
        if len(parts) < 3 or not parts[0] or not ":".join(parts[1:-1]) or not (unit.isascii() and unit.isdigit()):
            raise SearchError(
                f"bad neuron {text!r}; write MODEL:LAYER:UNIT, e.g. lite0:conv3:12 (LAYER: alias or tensor name)"
            )
        return cls(parts[0], ":".join(parts[1:-1]), int(unit))

    @property
    def layer_ref(self) -> LayerRef:
        return LayerRef(self.model, self.layer)

    def __str__(self) -> str:
        return f"{self.model}:{self.layer}:{self.unit}"
