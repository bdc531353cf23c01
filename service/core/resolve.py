"""What a ``model`` parameter names: the one reading of ``/classify?model=`` and of
``verydeep evaluate --model`` (docs/serving.md, "Classifying").

A spec is a model name, a named ensemble (``ensembles.json``), or a comma list of model names (an
ensemble on the fly). A list names models only (no ensemble inside it), each once; the members of
any ensemble must agree on their labels, since their posteriors are averaged class by class.
Whether a name is a loaded model is the caller's to say (the registry knows why one is missing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from model_store import Manifest
from model_store.scales import quoted
from service.core.errors import InvalidParameter

MAX_SPEC_LENGTH = 1024
"""Longest ``model`` parameter: enough for a comma list of 15 names of the longest kind."""


class HasManifest(Protocol):
    @property
    def manifest(self) -> Manifest: ...


@dataclass(frozen=True)
class ModelSpec:
    """``name`` as answers report it, and the models that run, in order."""

    name: str
    members: tuple[str, ...]
    kind: Literal["model", "ensemble", "list"]


def parse_spec(text: str, ensembles: Mapping[str, Sequence[str]]) -> ModelSpec:
    """The models ``text`` names; raises InvalidParameter (422) for a malformed spec."""
    if len(text) > MAX_SPEC_LENGTH:
        raise InvalidParameter(
            f"model: {len(text)} characters; at most {MAX_SPEC_LENGTH} (names are 1-64 "
            "characters, comma-separated)"
        )
    spec = text.strip()
    if not spec:
        raise InvalidParameter("model: names no model")
    if "," not in spec:
        if spec in ensembles:
            return ModelSpec(spec, tuple(ensembles[spec]), "ensemble")
        return ModelSpec(spec, (spec,), "model")
    names = [part.strip() for part in spec.split(",")]
    if any(not n for n in names):
        raise InvalidParameter(f"model: empty name in the list {quoted(spec)}")
    if len(set(names)) != len(names):
        raise InvalidParameter(f"model: a model is listed twice in {quoted(spec)}")
    for n in names:
        if n in ensembles:
            raise InvalidParameter(
                f"model: {quoted(n)} is an ensemble; a comma list names models only"
            )
    return ModelSpec(",".join(names), tuple(names), "list")


def check_labels(spec: ModelSpec, members: Sequence[HasManifest]) -> None:
    """Refuse an ensemble whose members have different labels (422)."""
    if len({tuple(m.manifest.labels) for m in members}) > 1:
        raise InvalidParameter(f"model: the models of {quoted(spec.name)} have different labels")
