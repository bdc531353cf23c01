"""The model store's contract: manifest schema, reading, writing and checksums. No torch."""

from model_store.checksum import sha256_bytes, sha256_file
from model_store.manifest import (
    CONFIGS,
    SCHEMA_VERSION,
    WEIGHT_LAYERS,
    ConfigName,
    Localization,
    Manifest,
    OnnxInfo,
    Preprocessing,
    Provenance,
    TrainScale,
    validate_name,
)
from model_store.store import (
    ENSEMBLES_FILE,
    MANIFEST_FILE,
    EntryError,
    ModelStore,
    StoreEntry,
    StoreError,
)

__all__ = [
    "CONFIGS",
    "ENSEMBLES_FILE",
    "MANIFEST_FILE",
    "SCHEMA_VERSION",
    "WEIGHT_LAYERS",
    "ConfigName",
    "EntryError",
    "Localization",
    "Manifest",
    "ModelStore",
    "OnnxInfo",
    "Preprocessing",
    "Provenance",
    "StoreEntry",
    "StoreError",
    "TrainScale",
    "sha256_bytes",
    "sha256_file",
    "validate_name",
]
