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


def int8_note(cpuinfo: str | None = None) -> str | None:
    """What an int8 model costs on this CPU, or None where it runs as measured (VNNI): without
    VNNI the 8-bit multiply-adds are emulated (slower, and the exporter's reduce_range weights
    lose a little accuracy; docs/serving.md, "int8 models")."""
    flags = cpu_flags(cpuinfo)
    if flags & {"avx512_vnni", "avx_vnni"}:
        return None
    if not flags:
        return "CPU flags unknown: int8 may run slower than float32 without VNNI"
    if "avx512f" in flags or "avx512bw" in flags:
        return (
            "CPU has AVX-512 but no VNNI: int8 runs without 8-bit dot products, may be slower "
            "than float32, and loses accuracy unless exported with reduce_range"
        )
    return (
        "CPU has no VNNI: int8 may run slower than float32 and loses accuracy unless exported "
        "with reduce_range"
    )
