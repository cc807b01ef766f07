"""Which run a scan state belongs to: the model (path and content hash), the preprocessing, the
analysis options, the image root with a hash of the image list, the shard and the probe images.

A resume or merge whose present run differs in any of these is refused, naming what differs
(``RunHeader.differences``): the saved top-N would not describe the present run. The header is
stored as JSON in every state file (``to_json``/``from_json``; the keys are the file format).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from onnx_nfi.config import AnalyzeConfig, RunSettings
from onnx_nfi.data.images import ImageSet
from onnx_nfi.data.preprocess import Preprocessing
from onnx_nfi.errors import ConfigError
from onnx_nfi.graph.load import LoadedModel
from onnx_nfi.store.vectors import ProbeSet

#: Options that change how a run uses the machine, how often it saves or how long it waits for a
#: lock, not what it computes: a resume or a merge may change them.
SCHEDULE_OPTIONS = tuple(f.name for f in fields(RunSettings))


@dataclass(frozen=True)
class Shard:
    """Part ``index`` (from 1) of ``count`` of an image list: a contiguous block of its sorted files."""

    index: int = 1
    count: int = 1

    def bounds(self, n_files: int) -> tuple[int, int]:
        """First and one-past-last file position of this shard (the same on every listing of the list)."""
        return (self.index - 1) * n_files // self.count, self.index * n_files // self.count

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``i/n`` with 1 <= i <= n."""
    index, _, count = text.partition("/")
    if not (index.strip().isdigit() and count.strip().isdigit()) or not 1 <= int(index) <= int(count):
        raise ConfigError(f"--shard must be i/n with 1 <= i <= n (e.g. 2/3), got {text!r}")
    return Shard(int(index), int(count))


def image_list_hash(imageset: ImageSet) -> str:
    """Hash of the image list as scanned: relative paths, sizes and labels (not the pixels: hashing
    10^6 files up front would cost as much as a scan; each image's own hash is kept as it is read)."""
    digest = hashlib.sha256()
    for f in imageset.files:
        path = Path(f.path)
        digest.update(f"{path.relative_to(imageset.root).as_posix()}\0{path.stat().st_size}\0{f.label}\n".encode())
    return digest.hexdigest()


def config_from_json(values: dict[str, Any]) -> AnalyzeConfig:
    """The analysis options stored as JSON (``AnalyzeConfig.to_json``: tuples came back as lists)."""
    return AnalyzeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


#: What a difference in each part of the header means to the user, in the order they are named.
_WHAT = {
    "name": "the model name", "model_sha256": "the model file", "preprocessing": "the preprocessing",
    "options": "the analysis options", "image_list": "the image list", "image_root": "the image folder",
    "shard": "the shard",
}


@dataclass(frozen=True)
class RunHeader:
    """The identity of one run (or shard of a run), as saved with each of its states."""

    name: str
    model_path: str
    model_sha256: str
    preprocessing: str
    config: AnalyzeConfig
    image_root: str
    image_list: str
    files: int
    shard: Shard
    probe: ProbeSet

    @property
    def options(self) -> dict[str, Any]:
        """The options that change what the run computes (its stored form, without the schedule)."""
        return {k: v for k, v in json.loads(self.config.to_json()).items() if k not in SCHEDULE_OPTIONS}

    def with_probe(self, probe: ProbeSet) -> RunHeader:
        """The same run scoring ``probe`` (a resume keeps the probe images it started with)."""
        return replace(self, probe=probe)

    def differences(self, other: RunHeader) -> list[str]:
        """What differs between this (saved) run and ``other`` (the present one), in words; empty:
        the same run. The probe images and the schedule options are not the run's identity."""
        out = []
        for key, what in _WHAT.items():
            before, now = getattr(self, key), getattr(other, key)
            if before == now:
                continue
            if key == "options":
                changed = sorted(k for k in {*before, *now} if before.get(k) != now.get(k))
                detail = ", ".join(f"--{k.replace('_', '-')} {before.get(k)!r} -> {now.get(k)!r}" for k in changed)
                out.append(f"{what} differ ({detail})")
            elif key in ("shard", "name"):
                out.append(f"{what} differs ({before} -> {now})")
            else:
                out.append(f"{what} differs")
        return out

    def to_json(self) -> dict[str, Any]:
        """The header as stored in a state file."""
        return {
            "name": self.name, "model_path": self.model_path, "model_sha256": self.model_sha256,
            "preprocessing": self.preprocessing, "options": self.options, "config": json.loads(self.config.to_json()),
            "image_root": self.image_root, "image_list": self.image_list, "files": self.files,
            "shard": [self.shard.index, self.shard.count], "probe_sha256": list(self.probe.sha256),
            "probe_paths": [str(p) for p in self.probe.paths],
        }

    @classmethod
    def from_json(cls, header: dict[str, Any]) -> RunHeader:
        """A header read back from a state file (KeyError, TypeError, ValueError: not one of ours)."""
        return cls(
            str(header["name"]), str(header["model_path"]), str(header["model_sha256"]), header["preprocessing"],
            config_from_json(dict(header["config"])), str(header["image_root"]), str(header["image_list"]),
            int(header["files"]), Shard(*map(int, header["shard"])),
            ProbeSet(tuple(header["probe_sha256"]), tuple(map(Path, header["probe_paths"])), False),
        )


def run_header(
    name: str, lm: LoadedModel, pre: Preprocessing, config: AnalyzeConfig, imageset: ImageSet, shard: Shard,
    probe: ProbeSet,
) -> RunHeader:
    """The header of every state of this run."""
    return RunHeader(
        name, str(Path(lm.path).resolve()), lm.sha256, pre.to_json(), config, str(imageset.root),
        image_list_hash(imageset), len(imageset.files), shard, probe,
    )
