"""The int8 note reads how the entry was exported: on a CPU without VNNI, a model exported with
reduce_range (7-bit weights) gets a note about speed only, one exported without it (on a VNNI
CPU) a note about overflow and accuracy too (docs/serving.md, "int8 models"). The CPU's flags are
faked: as cpuinfo text for ``model_store.cpu.int8_note``, through ``cpu_flags`` for the
service's cached probe."""

from __future__ import annotations

import logging

import pytest

from model_store import cpu
from service.core import sessions
from service.http.app import create_app
from tests.service.helpers import TestClient, settings_for

NO_VNNI = "processor\t: 0\nflags\t\t: fpu sse2 avx2\n"
AVX512_NO_VNNI = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"
VNNI = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
UNKNOWN = "processor\t: 0\n"


@pytest.mark.parametrize("cpuinfo", [NO_VNNI, AVX512_NO_VNNI, UNKNOWN])
def test_without_vnni_reduce_range_decides_what_the_note_says(cpuinfo: str) -> None:
    with_rr = cpu.int8_note(cpuinfo, reduce_range=True)
    without_rr = cpu.int8_note(cpuinfo, reduce_range=False)
    unknown = cpu.int8_note(cpuinfo)
    assert with_rr and without_rr and unknown
    for note in (with_rr, without_rr, unknown):
        assert "slower than float32" in note
    # exported with reduce_range: speed only
    assert "overflow" not in with_rr and "loses accuracy" not in with_rr
    assert "lose accuracy" not in with_rr and "with reduce_range" in with_rr
    # exported without it: 8-bit weights can overflow the emulated multiply-adds
    assert "without reduce_range" in without_rr and "overflow" in without_rr
    assert "lose accuracy" in without_rr and "re-export" in without_rr
    # not recorded: both, as before
    assert "loses accuracy unless exported with reduce_range" in unknown


@pytest.mark.parametrize("reduce_range", [True, False, None])
def test_with_vnni_there_is_no_note(reduce_range: bool | None) -> None:
    assert cpu.int8_note(VNNI, reduce_range=reduce_range) is None
    assert cpu.int8_note("flags\t: avx2 avx_vnni\n", reduce_range=reduce_range) is None


@pytest.fixture
def fake_cpu(monkeypatch: pytest.MonkeyPatch):
    """``set(cpuinfo)`` makes the service's probe read ``cpuinfo``'s flags (its cache cleared
    before and after)."""

    def set_cpuinfo(cpuinfo: str) -> None:
        flags = cpu.cpu_flags(cpuinfo)
        monkeypatch.setattr(cpu, "cpu_flags", lambda _cpuinfo=None: flags)
        sessions._this_cpu_int8_note.cache_clear()

    yield set_cpuinfo
    sessions._this_cpu_int8_note.cache_clear()


def test_model_note_reads_the_manifest_metrics_on_a_cpu_without_vnni(fake_cpu) -> None:
    fake_cpu(AVX512_NO_VNNI)
    exported_here = sessions.model_int8_note(
        "int8", sessions.CPU, {"int8_reduce_range": True, "int8_top1_agreement": 1.0}
    )
    exported_on_vnni = sessions.model_int8_note("int8", sessions.CPU, {"int8_reduce_range": False})
    assert exported_here == cpu.int8_note(AVX512_NO_VNNI, reduce_range=True)
    assert exported_on_vnni == cpu.int8_note(AVX512_NO_VNNI, reduce_range=False)
    assert "overflow" not in (exported_here or "") and "overflow" in (exported_on_vnni or "")
    # no metrics, or no such key (an entry written before it was recorded): the cautious note
    for metrics in (None, {}, {"int8_reduce_range": "yes"}):
        assert sessions.model_int8_note("int8", sessions.CPU, metrics) == cpu.int8_note(
            AVX512_NO_VNNI
        )
    assert sessions.model_int8_note("float32", sessions.CPU, {"int8_reduce_range": False}) is None
    assert "not measured" in (
        sessions.model_int8_note("int8", sessions.CUDA, {"int8_reduce_range": True}) or ""
    )


def test_model_note_on_a_cpu_with_vnni_is_none_either_way(fake_cpu) -> None:
    fake_cpu(VNNI)
    for reduce_range in (True, False):
        metrics = {"int8_reduce_range": reduce_range}
        assert sessions.model_int8_note("int8", sessions.CPU, metrics) is None


def test_export_records_what_the_note_reads(
    tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An int8 export records ``int8_reduce_range`` as the exporting CPU decided it (faked: no
    VNNI, so reduce_range), and the note of that entry on such a CPU is about speed only."""
    from tests.service.helpers import variants_store
    from training import quantize
    from training.shapes import write_shapes

    monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: False)
    calibration = write_shapes(tmp_path / "cal", 1, seed=5, workers=1, progress=False)
    store = variants_store(tmp_path / "store", 31, {"q": "int8"}, calibration)
    metrics = store.read("q").manifest.provenance.metrics
    assert metrics["int8_reduce_range"] is True
    flags = cpu.cpu_flags(NO_VNNI)
    monkeypatch.setattr(cpu, "cpu_flags", lambda _cpuinfo=None: flags)
    sessions._this_cpu_int8_note.cache_clear()
    try:
        note = sessions.model_int8_note("int8", sessions.CPU, metrics)
        # and what the service says of that entry, in /models and in its start-up log
        with caplog.at_level(logging.WARNING), TestClient(
            create_app(settings_for(store.root))
        ) as client:  # fmt: skip
            served = {m["name"]: m for m in client.get("/models").json()["models"]}["q"]
    finally:
        sessions._this_cpu_int8_note.cache_clear()
    assert note == cpu.int8_note(NO_VNNI, reduce_range=True) and "overflow" not in note
    assert served["int8_note"] == note
    assert f"int8 model q: {note}" in [r.getMessage() for r in caplog.records]
