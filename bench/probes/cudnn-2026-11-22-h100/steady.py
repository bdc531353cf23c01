import glob, json, statistics, sys, time
import numpy as np, onnxruntime as ort
ort.preload_dlls()
shapes = [(2, 256, 341), (2, 384, 512), (2, 512, 682), (10, 224, 224), (32, 224, 224)]
variants = {
    "HEURISTIC": {"cudnn_conv_algo_search": "HEURISTIC"},
    "HEURISTIC+nhwc": {"cudnn_conv_algo_search": "HEURISTIC", "prefer_nhwc": "1"},
    "EXHAUSTIVE+nhwc": {"cudnn_conv_algo_search": "EXHAUSTIVE", "prefer_nhwc": "1"},
    "DEFAULT+nhwc": {"cudnn_conv_algo_search": "DEFAULT", "prefer_nhwc": "1"},
}
out = {}
for store in sorted(glob.glob("/tmp/vdcache/store-*"), reverse=True):
    path = store + "/vgg16/model.onnx"
    fp16 = "fp16" in store
    dt = np.float16 if fp16 else np.float32
    for name, opts in variants.items():
        if not fp16 and name != "HEURISTIC+nhwc": continue
        o = ort.SessionOptions(); o.log_severity_level = 3
        s = ort.InferenceSession(path, o, providers=[("CUDAExecutionProvider", {"arena_extend_strategy": "kSameAsRequested", **opts})])
        row = {}
        for n, h, w in shapes:
            x = np.random.default_rng(0).standard_normal((n, 3, h, w), dtype=np.float32).astype(dt)
            t = time.perf_counter(); s.run(None, {"image": x}); first = time.perf_counter() - t
            ts = []
            for _ in range(3):
                t = time.perf_counter(); s.run(None, {"image": x}); ts.append(time.perf_counter() - t)
            row[f"{n}x{h}x{w}"] = (round(first * 1e3, 1), round(statistics.median(ts) * 1e3, 2))
        key = f"vgg16 {'fp16' if fp16 else 'fp32'} {name}"
        out[key] = row
        print(key, row, flush=True)
        del s
json.dump(out, open(sys.argv[1], "w"), indent=1)
