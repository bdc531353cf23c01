"""`make demo` (scripts/make_demo_store.sh) runs end to end: data, A, D and E from A, export, the
ensemble, evaluation on the unseen test seed, then the localisation net demo-loc from D and the
Table 8 variants. Tiny sizes here; the real run is in docs/training.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from model_store import ModelStore
from training.shapes import CLASSES

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "make_demo_store.sh"


def test_make_demo_regenerates_a_store_from_scratch(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "VERYDEEP": str(bin_dir / "verydeep"),
        "PYTHON": sys.executable,
        "STORE": str(tmp_path / "store"),
        "WORK": str(tmp_path / "work"),
        "TRAIN_PER_CLASS": "4",  # 32 images: one batch of 32
        "VAL_PER_CLASS": "1",
        "TEST_PER_CLASS": "1",
        "A_EPOCHS": "1",
        "DE_EPOCHS": "1",
        "LOC_EPOCHS": "1",
        "LOC_COMPARE_EPOCHS": "1",
        "LOC_VARIANTS": "pcr-all scr-fc",  # both regressions and both tunings
        "WORKERS": "0",
        "NICE": "",
    }
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo store regenerated in" in done.stdout

    store = ModelStore(tmp_path / "store")
    entries, broken = store.scan()
    assert sorted(entries) == ["demo-d", "demo-e", "demo-loc"] and not broken
    assert entries["demo-d"].manifest.config == "D" and entries["demo-e"].manifest.config == "E"
    loc = entries.pop("demo-loc").manifest
    assert loc.task == "localization" and loc.localization is not None
    assert loc.localization.model_dump() == {
        "regression": "per-class", "tuned": "all", "classifier": "demo-de"
    }  # fmt: skip
    variants = ModelStore(tmp_path / "work" / "loc-store").scan()[0]
    # the variants, and the classifier that ranks their classes in the evaluation
    assert sorted(variants) == ["demo-d", "demo-e", "demo-loc-pcr-all", "demo-loc-scr-fc"]
    assert variants["demo-loc-scr-fc"].manifest.localization.regression == "single"
    loc_errors = json.loads((tmp_path / "work" / "loc_test_errors.json").read_text())
    assert sorted(loc_errors) == ["pcr-all", "pcr-all+scr-fc", "scr-fc"]
    union = loc_errors["pcr-all+scr-fc"]  # the two nets' box sets merged, as /localize?model=a,b
    assert union["model"] == "demo-loc-pcr-all,demo-loc-scr-fc"
    assert [n["model"] for n in union["localizers"]] == ["demo-loc-pcr-all", "demo-loc-scr-fc"]
    assert all(r["images"] == len(CLASSES) for r in loc_errors.values())
    for row in loc_errors.values():  # by `verydeep evaluate --task localization`
        assert row["task"] == "localization" and row["classified_by"] == "demo-de"
        for key in ("central_crop_error", "top1_localization_error", "top5_localization_error"):
            assert 0 <= row[key] <= 1
    for entry in entries.values():
        assert entry.manifest.labels == list(CLASSES)
        assert (entry.manifest.train_scale.min, entry.manifest.train_scale.max) == (224, 320)
        assert entry.manifest.preprocessing.std != (1, 1, 1)  # --input-std data
    assert store.ensembles() == {"demo-de": ["demo-d", "demo-e"]}

    results = json.loads((tmp_path / "work" / "test_errors.json").read_text())["results"]
    assert [r["model"] for r in results] == ["demo-d", "demo-e", "demo-de"]
    assert all(r["images"] == len(CLASSES) for r in results)
    for name in ("a", "d", "e"):
        assert (tmp_path / "work" / name / "curves.png").is_file()
