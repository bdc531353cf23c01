"""What this CPU can do for int8 models (docs/serving.md, "int8 models"): read from
/proc/cpuinfo, below both wings, so that the exporter (``reduce_range``) and the service (its
``int8_note``) read the flags the same way. No torch, no onnxruntime."""

from __future__ import annotations


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags: the first ``flags`` (x86) or ``Features`` (Arm) line of
    /proc/cpuinfo, or of ``cpuinfo``; empty where the file cannot be read."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_vnni(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has 8-bit dot products (AVX-512 VNNI or AVX-VNNI): onnxruntime's int8
    convolutions are fast and exact in 8 bits there (docs/serving.md, "int8 models")."""
    return bool(cpu_flags(cpuinfo) & {"avx512_vnni", "avx_vnni"})


def int8_note(cpuinfo: str | None = None, *, reduce_range: bool | None = None) -> str | None:
    """What an int8 model costs on this CPU, or None where it runs as measured (VNNI).

    Without VNNI the 8-bit multiply-adds are emulated: slower, whatever the model. Whether they
    also lose accuracy depends on how it was exported (``reduce_range``, recorded as the
    manifest's ``provenance.metrics["int8_reduce_range"]``): with 7-bit weights the emulation's
    16-bit intermediate sums cannot saturate, so the note is about speed only; with full 8-bit
    weights (exported on a VNNI CPU) they can, and the note says so; ``None`` (not recorded)
    gives both. docs/serving.md, "int8 models"."""
    flags = cpu_flags(cpuinfo)
    if flags & {"avx512_vnni", "avx_vnni"}:
        return None
    if not flags:
        speed = "CPU flags unknown: int8 may run slower than float32 without VNNI"
    elif "avx512f" in flags or "avx512bw" in flags:
        speed = (
            "CPU has AVX-512 but no VNNI: int8 runs without 8-bit dot products and may be "
            "slower than float32"
        )
    else:
        speed = "CPU has no VNNI: int8 may run slower than float32"
    if reduce_range is True:
        return f"{speed} (exported with reduce_range: accuracy as verified at export)"
    if reduce_range is False:
        return (
            f"{speed}; exported without reduce_range (8-bit weights, for a VNNI CPU), its "
            "multiply-adds can overflow here and lose accuracy: re-export it with --int8 on a "
            "CPU without VNNI"
        )
    return f"{speed}, and loses accuracy unless exported with reduce_range"
