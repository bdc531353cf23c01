#!/usr/bin/env python
"""Give store entries exported before the ``features`` output existed that output, by ONNX graph
surgery (docs/training.md, "The features output"): no checkpoint and no torch needed.

    .venv/bin/python scripts/add_features_output.py model_store demo-d demo-e
    .venv/bin/python scripts/add_features_output.py --check model_store demo-d   # write nothing

The tensor that fc8 (the 1x1 conv that outputs ``scores``) reads, the output of fc7's ReLU, is
renamed ``features`` and listed as the graph's second output, ``(N, F, h, w)``; no node is added,
removed or changed otherwise, so the file is what ``verydeep export`` writes today for the same
weights. Before anything is written, onnxruntime runs the old and the new file on random inputs
at the export's verification sizes: ``scores`` must be bit-identical (asked for alone and
together with ``features``), and ``features`` must be fc8's input (fc8's weights on it give the
scores). The entry is then replaced atomically (``ModelStore.write``) with the new ONNX sha256
and ``onnx.features`` in its manifest; an entry that already has the output is left as it is.
Needs the ``onnx`` package (the ``train`` extra).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from model_store import MANIFEST_FILE, Manifest, ModelStore, StoreError, sha256_bytes

FEATURES = "features"
# (batch, height, width): the verification sizes of `verydeep export` (training/export.py).
VERIFY_SIZES = ((1, 224, 224), (2, 256, 320), (1, 480, 640))
# How close fc8's weights applied to ``features`` in numpy must come to onnxruntime's scores:
# ATOL + RTOL * max |score| (float16 graphs: the half-precision rounding of onnxruntime's conv).
RTOL = {"float32": 1e-4, "float16": 1e-2}
ATOL = {"float32": 1e-5, "float16": 1e-3}
NUMPY = {"float32": np.float32, "float16": np.float16}


class SurgeryError(Exception):
    """The graph is not one this surgery understands, or a check failed; nothing was written."""


def fc7_relu(graph: onnx.GraphProto, scores: str) -> tuple[onnx.NodeProto, onnx.NodeProto]:
    """``(fc7's ReLU, fc8)``: fc8 is the 1x1 Conv that outputs ``scores``, fed by a Relu that is
    fed by a Conv (fc7)."""
    producer = {out: node for node in graph.node for out in node.output}
    fc8 = producer.get(scores)
    if fc8 is None or fc8.op_type != "Conv":
        raise SurgeryError(f"output {scores!r} is not computed by a Conv (fc8)")
    relu = producer.get(fc8.input[0])
    if relu is None or relu.op_type != "Relu":
        raise SurgeryError(f"fc8 ({fc8.name}) does not read a Relu's output (fc7's ReLU)")
    fc7 = producer.get(relu.input[0])
    if fc7 is None or fc7.op_type != "Conv":
        raise SurgeryError(f"the Relu before fc8 ({relu.name}) does not read a Conv (fc7)")
    return relu, fc8


def _initializer(graph: onnx.GraphProto, name: str) -> np.ndarray:
    """The value of initializer ``name``, also through the Identity nodes by which torch's
    export shares equal initializers (such as the zero biases of a fresh net)."""
    identity = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    while name in identity:
        name = identity[name]
    for tensor in graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    raise SurgeryError(f"fc8's parameter {name!r} is not an initializer of the graph")


def fc8_weights(graph: onnx.GraphProto, scores: str) -> tuple[np.ndarray, np.ndarray]:
    """fc8's ``(weight (K, F), bias (K,))`` as float32."""
    _, fc8 = fc7_relu(graph, scores)
    weight = _initializer(graph, fc8.input[1])
    if weight.ndim != 4 or weight.shape[2:] != (1, 1):
        raise SurgeryError(f"fc8 ({fc8.name}) is not a 1x1 conv: weight shape {weight.shape}")
    k = weight.shape[0]
    bias = _initializer(graph, fc8.input[2]) if len(fc8.input) > 2 else np.zeros(k)
    return weight[:, :, 0, 0].astype(np.float32), bias.astype(np.float32)


def add_features_output(model: onnx.ModelProto, scores: str = "scores") -> onnx.ModelProto:
    """A copy of ``model`` whose fc7 ReLU output is named ``features`` and is a graph output."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    outputs = [o.name for o in graph.output]
    if FEATURES in outputs:
        raise SurgeryError(f"the graph already has an output {FEATURES!r}")
    names = {FEATURES} & (
        {t.name for t in graph.initializer}
        | {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
        | {name for node in graph.node for name in (*node.input, *node.output)}
    )
    if names:
        raise SurgeryError(f"the graph already has a tensor named {FEATURES!r}")
    if scores not in outputs:
        raise SurgeryError(f"the graph has outputs {outputs}, not {scores!r}")
    relu, _ = fc7_relu(graph, scores)
    old = relu.output[0]
    if old in outputs:
        raise SurgeryError(f"fc7's ReLU output {old!r} is already a graph output")
    weight, _ = fc8_weights(graph, scores)
    for node in graph.node:
        node.input[:] = [FEATURES if name == old else name for name in node.input]
    relu.output[0] = FEATURES
    for info in graph.value_info:
        if info.name == old:
            info.name = FEATURES
    # (N, F, h, w): the scores' element type and their N, h and w dimensions.
    score_info = graph.output[outputs.index(scores)]
    features = graph.output.add()
    features.CopyFrom(score_info)
    features.name = FEATURES
    dims = features.type.tensor_type.shape.dim
    if len(dims) == 4:
        dims[1].Clear()
        dims[1].dim_value = weight.shape[1]
    onnx.checker.check_model(model, full_check=True)
    return model


def verify(
    old: bytes, new: bytes, manifest: Manifest, sizes: tuple[tuple[int, int, int], ...]
) -> list[str]:
    """Check the new graph against the old one; a line per size, or SurgeryError."""
    info = manifest.onnx
    options = ort.SessionOptions()
    providers = ["CPUExecutionProvider"]
    before = ort.InferenceSession(old, options, providers=providers)
    after = ort.InferenceSession(new, options, providers=providers)
    weight, bias = fc8_weights(onnx.load_from_string(new).graph, info.output)
    rng = np.random.default_rng(0)
    lines = []
    for batch, height, width in sizes:
        x = rng.standard_normal((batch, 3, height, width), dtype=np.float32)
        feed = {info.input: x.astype(NUMPY[info.dtype])}
        (expected,) = before.run([info.output], feed)
        (alone,) = after.run([info.output], feed)
        scores, features = after.run([info.output, FEATURES], feed)
        size = f"{batch}x3x{height}x{width}"
        if not (np.array_equal(expected, alone) and np.array_equal(expected, scores)):
            raise SurgeryError(f"{info.output} differ from the old graph's at {size}")
        want = (batch, weight.shape[1], *expected.shape[2:])
        if features.shape != want or features.dtype != expected.dtype:
            raise SurgeryError(
                f"{FEATURES} at {size} is {features.dtype} {features.shape}, expected {want}"
            )
        if features.min() < 0:
            raise SurgeryError(f"{FEATURES} at {size} has negative values: not after a ReLU")
        fc8 = np.einsum("kf,nfhw->nkhw", weight, features.astype(np.float32))
        fc8 += bias[None, :, None, None]
        diff = float(np.max(np.abs(fc8 - expected.astype(np.float32))))
        reference = float(np.max(np.abs(expected.astype(np.float32))))
        tolerance = ATOL[info.dtype] + RTOL[info.dtype] * reference
        if not diff <= tolerance:
            raise SurgeryError(
                f"fc8 on {FEATURES} at {size} differs from {info.output} by {diff:.3g} "
                f"> {tolerance:.3g}: it is not fc8's input"
            )
        lines.append(
            f"{size}: {info.output} bit-identical, {FEATURES} {features.shape}, fc8 on it "
            f"within {diff:.2g} of {info.output}"
        )
    return lines


def upgrade_entry(
    store: ModelStore,
    name: str,
    *,
    check: bool = False,
    sizes: tuple[tuple[int, int, int], ...] = VERIFY_SIZES,
) -> list[str]:
    """Add the output to entry ``name`` (with ``check``: verify only); the report's lines."""
    entry = store.read(name)  # validates the manifest and the ONNX sha256
    manifest = entry.manifest
    if manifest.onnx.features is not None:
        return [f"{name}: already has the output {manifest.onnx.features!r}, left as it is"]
    others = sorted(
        p.name for p in entry.path.iterdir() if p.name not in (MANIFEST_FILE, manifest.onnx.file)
    )
    if others:
        raise SurgeryError(
            f"{entry.path} also holds {', '.join(others)}, which rewriting the entry would drop"
        )
    old = entry.onnx_path.read_bytes()
    new = add_features_output(onnx.load_from_string(old), manifest.onnx.output).SerializeToString()
    lines = [f"{name}: {line}" for line in verify(old, new, manifest, sizes)]
    sha256 = sha256_bytes(new)
    if check:
        return [*lines, f"{name}: checked, nothing written (new sha256 would be {sha256})"]
    onnx_info = manifest.onnx.model_copy(update={"sha256": sha256, "features": FEATURES})
    upgraded = Manifest.model_validate({**manifest.model_dump(), "onnx": onnx_info.model_dump()})
    with tempfile.TemporaryDirectory(prefix="verydeep-features-") as tmp:
        path = Path(tmp) / manifest.onnx.file
        path.write_bytes(new)
        store.write(upgraded, path, overwrite=True)
    store.read(name)
    growth = len(new) - len(old)
    return [*lines, f"{name}: written, sha256 {sha256} ({growth:+d} bytes)"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Add the features output (fc7 after its ReLU) to store entries exported "
        "before it existed, keeping their scores bit-identical.",
    )
    parser.add_argument("store", help="the model store directory")
    parser.add_argument("names", nargs="+", metavar="NAME", help="entries to upgrade")
    parser.add_argument("--check", action="store_true", help="verify the surgery but write nothing")
    args = parser.parse_args(argv)
    store = ModelStore(args.store)
    failed = 0
    for name in args.names:
        try:
            for line in upgrade_entry(store, name, check=args.check):
                print(line)
        except (SurgeryError, StoreError, onnx.checker.ValidationError) as err:
            print(f"{name}: {err}; nothing written", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
