"""The models the service serves: the store loaded once at start-up, broken entries skipped.

Loading verifies each entry (manifest, ONNX sha256), opens its session and warms it up at its test
scales. An entry that fails any step is skipped with its reason, as is a named ensemble with a
missing member or members that disagree on labels; everything else is served.

A request's ``model`` parameter is only ever looked up among the names loaded here: it never
becomes a path, so no request can reach a file outside (or inside) the store. Sessions are built
from the verified bytes and live in memory; an ONNX file changed on disk after start-up changes
no answer, and ``changed_on_disk`` reports it (a restart would verify it again).

A store that is missing or holds no entry at all is no store to serve: ``unservable_store`` says
so, and ``verydeep serve`` refuses to start on it (docs/serving.md).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Literal

from model_store import ModelStore, StoreError
from model_store.manifest import NAME_PATTERN
from model_store.scales import quoted
from service.core.engine import Engine, open_engine
from service.core.errors import InvalidParameter, ServiceError, UnknownModel, UnsupportedModel
from service.core.resolve import MAX_SPEC_LENGTH, ModelSpec, check_labels, parse_spec
from service.core.sessions import EngineError
from service.settings import Settings

log = logging.getLogger(__name__)

State = Literal["loading", "ready", "failed"]


def unservable_store(store: ModelStore) -> str | None:
    """Why ``store`` cannot be served at all, or None: its directory is missing, unreadable or
    holds no entry (a folder with ``manifest.json`` or ``model.onnx``). Broken entries are no
    such reason: loading skips them and serves the rest."""
    root = store.root.resolve()
    if not store.root.exists():
        return f"the model store {root} does not exist"
    if not store.root.is_dir():
        return f"the model store {root} is not a directory"
    try:
        names = store.names()
    except OSError as err:
        return f"the model store {root} cannot be read: {err.strerror or err}"
    if not names:
        return (
            f"the model store {root} holds no model entry (a folder with manifest.json and "
            "model.onnx)"
        )
    return None


class _Stopped(Exception):
    """The service began shutting down before the store was loaded."""


@dataclass(frozen=True)
class Skipped:
    name: str
    kind: Literal["model", "ensemble"]
    reason: str


@dataclass(frozen=True)
class Resolved:
    """What a ``model`` parameter names: ``name`` as reported, and the members that run."""

    name: str
    members: tuple[Engine, ...]

    @property
    def labels(self) -> list[str]:
        return self.members[0].manifest.labels

    @property
    def num_classes(self) -> int:
        return self.members[0].manifest.num_classes


class Registry:
    """Loaded engines, named ensembles and skipped entries; ``load`` may run in a thread while
    readers look at a consistent snapshot."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = ModelStore(settings.model_store)
        self._lock = threading.Lock()
        self._models: dict[str, Engine] = {}
        self._ensembles: dict[str, list[str]] = {}
        self._skipped: list[Skipped] = []
        self._state: State = "loading"
        self._problem: str | None = None
        self._default: str | None = None
        self._loader: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def state(self) -> State:
        return self._state

    @property
    def ready(self) -> bool:
        return self._state == "ready"

    @property
    def problem(self) -> str | None:
        """Why the registry is not ready, or what is wrong though it is."""
        return self._problem

    @property
    def models(self) -> dict[str, Engine]:
        with self._lock:
            return dict(self._models)

    @property
    def ensembles(self) -> dict[str, list[str]]:
        with self._lock:
            return {name: list(members) for name, members in self._ensembles.items()}

    @property
    def skipped(self) -> list[Skipped]:
        with self._lock:
            return list(self._skipped)

    @property
    def default(self) -> str | None:
        return self._default

    def load_in_background(self) -> threading.Thread | None:
        """Start ``load`` in a daemon thread, once; None when it was started or done already."""
        with self._lock:
            if self._loader is not None or self._state != "loading":
                return None
            self._loader = threading.Thread(target=self.load, name="verydeep-load", daemon=True)
        self._loader.start()
        return self._loader

    def stop(self, timeout: float = 30.0) -> None:
        """Ask a background load to stop after the entry it is loading, and wait for it."""
        self._stopping.set()
        loader = self._loader
        if loader is not None and loader.is_alive():
            loader.join(timeout)

    def load(self) -> None:
        """Load every entry of the store; never raises (failures end up in ``skipped`` or
        ``problem``)."""
        started = time.perf_counter()
        try:
            self._load_models()
            self._load_ensembles()
            self._choose_default()
        except _Stopped:
            # A shutdown, not a failure (the server may never have started: a taken port).
            self._problem = "loading stopped: the service is shutting down"
            self._state = "failed"
            log.info("loading stopped: the service is shutting down (%d loaded)", len(self._models))
            return
        except StoreError as err:
            self._finish("failed", str(err))
            return
        except Exception as err:
            log.exception("loading the model store failed")
            self._finish("failed", f"loading the model store failed: {err}")
            return
        if not self._models:
            where = self.store.root.resolve()
            self._finish("failed", f"no loadable model in the model store {where}")
            return
        self._finish("ready", self._problem)
        log.info(
            "ready: %d models, %d ensembles, %d skipped in %.1f s",
            len(self._models),
            len(self._ensembles),
            len(self._skipped),
            time.perf_counter() - started,
        )

    def changed_on_disk(self) -> dict[str, str]:
        """``{model: what changed}`` for loaded models whose ONNX file is no longer the one that
        was loaded (one ``stat`` per model)."""
        changes = {name: engine.changed_on_disk() for name, engine in sorted(self.models.items())}
        return {name: change for name, change in changes.items() if change}

    def resolve(self, spec: str | None) -> Resolved:
        """A ``model`` parameter (model, ensemble, comma list, or None for the default) to the
        engines that run it (``service.core.resolve``). Raises UnknownModel (404) or
        InvalidParameter (422)."""
        if spec is None or (not spec.strip() and len(spec) <= MAX_SPEC_LENGTH):
            if self._default is None:
                raise UnknownModel(
                    self._problem or "no model was named and there is no default model"
                )
            spec = self._default
        parsed = parse_spec(spec, self.ensembles)
        models = self.models
        members = tuple(self._model(n, models) for n in parsed.members)
        for member in members:
            if member.manifest.task == "localization":
                where = "" if parsed.kind == "model" else f"{quoted(parsed.name)} lists "
                raise UnsupportedModel(
                    f"model: {where}{member.name!r}, a localization model: it regresses boxes, "
                    f"not class scores; use POST /localize?model={member.name}"
                )
        check_labels(parsed, members)
        return Resolved(parsed.name, members)

    def localization_models(self, name: str | None) -> Resolved:
        """The localisation entry ``name``, or the comma list of them whose box sets are merged
        together (None: the store's only one), for ``/localize``. Raises UnknownModel (404),
        InvalidParameter or UnsupportedModel (422)."""
        models = self.models
        entries = sorted(n for n, e in models.items() if e.manifest.task == "localization")
        if name is None or (not name.strip() and len(name) <= MAX_SPEC_LENGTH):
            if len(entries) == 1:
                return Resolved(entries[0], (models[entries[0]],))
            if not entries:
                raise InvalidParameter(
                    "model: the store serves no localization model (an entry of task "
                    "localization, docs/localization.md)"
                )
            raise InvalidParameter(
                f"model: the store serves several localization models; name one of "
                f"{', '.join(entries)}, or several as a comma list"
            )
        parsed = parse_spec(name, self.ensembles)
        if parsed.kind == "ensemble":
            raise InvalidParameter(
                f"model: {quoted(parsed.name)} is an ensemble of classification models; "
                f"/localize takes localization models ({', '.join(entries) or 'none served'}), "
                "one or a comma list"
            )
        nets = [self._model(n, models) for n in parsed.members]
        for engine in nets:
            if engine.manifest.task != "localization":
                raise UnsupportedModel(
                    f"model: {engine.name!r} is a classification model; /localize needs "
                    f"localization models ({', '.join(entries) or 'none served'}) and takes "
                    f"the classifier as classify_with={engine.name}"
                )
        check_labels(parsed, nets)
        return Resolved(parsed.name, tuple(nets))

    def classifier_for(self, locnets: Resolved, spec: str | None) -> Resolved:
        """What ranks the classes of the boxes of ``locnets``: ``spec`` (``classify_with``),
        else the classifier their manifests name (``localization.classifier``, the same for
        all); its labels must be theirs (422)."""
        if spec is None or (not spec.strip() and len(spec) <= MAX_SPEC_LENGTH):
            spec = self._named_classifier(locnets)
        try:
            resolved = self.resolve(spec)
        except ServiceError as err:
            if isinstance(err, UnknownModel):
                raise
            raise type(err)(f"classify_with: {err.message.removeprefix('model: ')}") from None
        try:
            check_labels(
                ModelSpec(resolved.name, (), "list"), [*locnets.members, *resolved.members]
            )
        except InvalidParameter:
            raise InvalidParameter(
                f"classify_with: {quoted(resolved.name)} has other labels than "
                f"{quoted(locnets.name)}; the classifier must rank the classes the boxes are for"
            ) from None
        return resolved

    def _named_classifier(self, locnets: Resolved) -> str:
        named = {
            net.name: net.manifest.localization.classifier  # type: ignore[union-attr]
            for net in locnets.members
        }
        missing = [n for n, c in named.items() if c is None]
        if missing:
            raise InvalidParameter(
                f"classify_with: {', '.join(map(repr, missing))} names no classifier in its "
                "manifest; pass classify_with (a classification model, ensemble or comma list)"
            )
        if len(set(named.values())) > 1:
            pairs = ", ".join(f"{n!r}: {c!r}" for n, c in named.items())
            raise InvalidParameter(
                f"classify_with: the localization models name different classifiers ({pairs}); "
                "pass classify_with (a classification model, ensemble or comma list)"
            )
        (classifier,) = set(named.values())
        assert classifier is not None
        if classifier not in self.models and classifier not in self.ensembles:
            raise InvalidParameter(
                f"classify_with: the classifier of {quoted(locnets.name)}, {classifier!r}, is "
                "not served here; pass classify_with (a classification model, ensemble or "
                "comma list)"
            )
        return classifier

    def _model(self, name: str, models: dict[str, Engine]) -> Engine:
        if name in models:
            return models[name]
        known = sorted(models) + sorted(self.ensembles)
        if not NAME_PATTERN.fullmatch(name):
            raise UnknownModel(
                f"unknown model {quoted(name)}: not a model name (1-64 letters, digits, '.', '_' "
                f"or '-', starting with a letter or digit); available: {', '.join(known) or 'none'}"
            )
        for s in self.skipped:
            if s.name == name:
                raise UnknownModel(f"{s.kind} {name!r} is not available: {s.reason}")
        if self._state == "loading":
            raise UnknownModel(f"unknown model {name!r} (the store is still loading)")
        raise UnknownModel(f"unknown model {name!r}; available: {', '.join(known) or 'none'}")

    def _skip(self, name: str, kind: Literal["model", "ensemble"], reason: str) -> None:
        log.warning("skipping %s %r: %s", kind, name, reason)
        with self._lock:
            self._skipped.append(Skipped(name, kind, reason))

    def _load_models(self) -> None:
        s = self.settings
        if not self.store.root.is_dir():
            raise StoreError(f"the model store {self.store.root.resolve()} is not a directory")
        for name in self.store.names():
            if self._stopping.is_set():
                raise _Stopped
            try:
                engine = open_engine(self.store, name, s.engine_options())
                if s.warmup:
                    engine.warm_up(engine.manifest.test_scales)
            except StoreError as err:
                self._skip(name, "model", getattr(err, "reason", str(err)))
                continue
            except EngineError as err:
                self._skip(name, "model", str(err))
                continue
            except Exception as err:
                self._skip(name, "model", f"{type(err).__name__}: {err}")
                continue
            with self._lock:
                self._models[name] = engine
            log.info("loaded %s on %s (%s)", name, engine.provider, _sessions_note(engine))
            if engine.int8_note:
                log.warning("int8 model %s: %s", name, engine.int8_note)

    def _load_ensembles(self) -> None:
        try:
            declared = self.store.ensembles()
        except StoreError as err:
            self._skip("ensembles.json", "ensemble", str(err))
            return
        entry_names = set(self.store.names())
        for name, members in declared.items():
            reason = self._ensemble_problem(name, members, entry_names)
            if reason:
                self._skip(name, "ensemble", reason)
                continue
            with self._lock:
                self._ensembles[name] = list(members)

    def _ensemble_problem(self, name: str, members: list[str], entries: set[str]) -> str | None:
        if name in entries:
            return "its name is also the name of a model entry"
        if len(set(members)) != len(members):
            return "a member is listed twice"
        missing = [m for m in members if m not in self._models]
        if missing:
            why = {s.name: s.reason for s in self._skipped if s.kind == "model"}
            details = [f"{m} ({why.get(m, 'not in the store')})" for m in missing]
            return "missing members: " + "; ".join(details)
        localizers = [m for m in members if self._models[m].manifest.task == "localization"]
        if localizers:
            return (
                f"{', '.join(localizers)} is a localization model (boxes, not class scores); "
                "an ensemble's members are classification models"
            )
        if len({tuple(self._models[m].manifest.labels) for m in members}) != 1:
            return "its members have different labels"
        return None

    def _choose_default(self) -> None:
        wanted = self.settings.default_model
        if wanted is None:
            classifiers = [n for n, e in self._models.items() if e.manifest.task != "localization"]
            self._default = min(classifiers, default=None)
            return
        try:
            self._default = self.resolve(wanted).name
        except ServiceError as err:
            self._problem = f"the default model {wanted!r} is not available: {err.message}"
            log.error(self._problem)

    def _finish(self, state: State, problem: str | None) -> None:
        self._problem = problem
        self._state = state
        if state == "failed":
            log.error("the service cannot serve: %s", problem)


def _sessions_note(engine: Engine) -> str:
    """How the start-up log describes a model's sessions."""
    note = f"{engine.sessions} session(s)"
    if engine.session_limit > engine.sessions:
        note += f", up to {engine.session_limit} as new input shapes come"
    if engine.shared_weights:
        note += ", one copy of the weights"
    if engine.shared_weights_read:  # the graph optimiser rewrote weights per session
        note += ", read by each session's optimiser"
    return note
