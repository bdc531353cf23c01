"""Reading, validating and atomically writing entries of a model store directory.

Layout (docs/training.md, "The model store")::

    <root>/<name>/manifest.json
    <root>/<name>/model.onnx
    <root>/ensembles.json        optional {"<ensemble>": ["<model>", ...]}

A directory is an entry when it holds ``manifest.json`` or ``model.onnx``; anything else
(``__pycache__``, hidden temporary directories of an unfinished write) is not listed.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from model_store.checksum import sha256_file
from model_store.manifest import Manifest, validate_name

MANIFEST_FILE = "manifest.json"
ENSEMBLES_FILE = "ensembles.json"


class StoreError(Exception):
    """Something in the store is unusable; the message says what and where."""


class EntryError(StoreError):
    """One entry of the store is broken; ``name`` says which."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"model store entry {name!r}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class StoreEntry:
    name: str
    path: Path
    manifest: Manifest

    @property
    def onnx_path(self) -> Path:
        return self.path / self.manifest.onnx.file


def _format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "manifest"
        parts.append(f"{loc}: {e['msg']}")
    return "invalid manifest: " + "; ".join(parts)


class ModelStore:
    """A model store rooted at a directory. Reading never modifies anything."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"

    def names(self) -> list[str]:
        """Names of the directories that look like entries, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir()
            and not p.name.startswith((".", "_"))
            and ((p / MANIFEST_FILE).exists() or (p / "model.onnx").exists())
        )

    def entry_path(self, name: str) -> Path:
        """The directory of entry ``name``; a name that is not one plain component is refused."""
        try:
            validate_name(name)
        except ValueError as err:
            raise StoreError(str(err)) from None
        return self.root / name

    def read(self, name: str, *, verify: bool = True) -> StoreEntry:
        """Load and validate one entry; with ``verify`` the ONNX file's sha256 is checked."""
        path = self.entry_path(name)
        manifest_path = path / MANIFEST_FILE
        if not manifest_path.is_file():
            raise EntryError(name, f"missing {MANIFEST_FILE} in {path}")
        try:
            raw = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise EntryError(name, f"unreadable {MANIFEST_FILE}: {err}") from None
        try:
            manifest = Manifest.model_validate(raw)
        except ValidationError as err:
            raise EntryError(name, _format_validation_error(err)) from None
        if manifest.name != name:
            raise EntryError(name, f"manifest name {manifest.name!r} differs from directory name")
        entry = StoreEntry(name=name, path=path, manifest=manifest)
        if not entry.onnx_path.is_file():
            raise EntryError(name, f"missing ONNX file {entry.onnx_path}")
        if verify:
            actual = sha256_file(entry.onnx_path)
            if actual != manifest.onnx.sha256:
                raise EntryError(
                    name,
                    f"sha256 mismatch for {manifest.onnx.file}: manifest says "
                    f"{manifest.onnx.sha256}, file has {actual}",
                )
        return entry

    def scan(self, *, verify: bool = True) -> tuple[dict[str, StoreEntry], dict[str, str]]:
        """Read every entry: ``(loaded entries, {broken name: reason})``."""
        entries: dict[str, StoreEntry] = {}
        broken: dict[str, str] = {}
        for name in self.names():
            try:
                entries[name] = self.read(name, verify=verify)
            except StoreError as err:
                broken[name] = getattr(err, "reason", str(err))
        return entries, broken

    def ensembles(self) -> dict[str, list[str]]:
        """The named ensembles of ``ensembles.json`` (empty when the file is absent)."""
        path = self.root / ENSEMBLES_FILE
        if not path.exists():
            return {}
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StoreError(f"unreadable {path}: {err}") from None
        if not isinstance(raw, dict):
            raise StoreError(f"{path} must hold an object of ensemble name -> list of models")
        result: dict[str, list[str]] = {}
        for name, members in raw.items():
            if (
                not isinstance(members, list)
                or not members
                or not all(isinstance(m, str) for m in members)
            ):
                raise StoreError(f"{path}: ensemble {name!r} must be a non-empty list of names")
            try:
                validate_name(name)
                for m in members:
                    validate_name(m)
            except ValueError as err:
                raise StoreError(f"{path}: ensemble {name!r}: {err}") from None
            result[name] = list(members)
        return result

    def write(
        self, manifest: Manifest, onnx_file: str | Path, *, overwrite: bool = False
    ) -> StoreEntry:
        """Write an entry atomically: everything goes to a hidden temporary directory first,
        is checked, then renamed into place. A failure leaves no entry behind."""
        name = manifest.name
        final = self.entry_path(name)
        if final.exists() and not overwrite:
            raise StoreError(f"model store entry {name!r} already exists in {self.root}")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            target = tmp / manifest.onnx.file
            shutil.copyfile(onnx_file, target)
            actual = sha256_file(target)
            if actual != manifest.onnx.sha256:
                raise EntryError(
                    name,
                    f"ONNX file sha256 {actual} does not match manifest {manifest.onnx.sha256}",
                )
            _write_json(tmp / MANIFEST_FILE, manifest.model_dump(mode="json"))
            _fsync_path(target)
            if final.exists():
                trash = self.root / f".old-{name}-{uuid.uuid4().hex[:8]}"
                os.replace(final, trash)
                os.replace(tmp, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return StoreEntry(name=name, path=final, manifest=manifest)

    def write_ensembles(self, ensembles: dict[str, list[str]]) -> None:
        """Replace ``ensembles.json`` atomically."""
        for name, members in ensembles.items():
            validate_name(name)
            for m in members:
                validate_name(m)
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ENSEMBLES_FILE
        tmp = path.with_name(f".{ENSEMBLES_FILE}.{uuid.uuid4().hex[:8]}")
        _write_json(tmp, ensembles)
        os.replace(tmp, path)


def _write_json(path: Path, data: object) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
