import glob, json, statistics, sys, time
import numpy as np, onnxruntime as ort
ort.preload_dlls()
shapes = [(1, 224, 224), (10, 224, 224), (1, 256, 341), (2, 256, 341), (2, 512, 682)]
out = {}
for store in sorted(glob.glob("/tmp/vdcache/store-*")):
    for path in sorted(glob.glob(store + "/vgg16/model.onnx")):
        fp16 = "fp16" in store
        for search in ("HEURISTIC", "DEFAULT", "EXHAUSTIVE"):
            o = ort.SessionOptions(); o.log_severity_level = 3
            s = ort.InferenceSession(path, o, providers=[("CUDAExecutionProvider", {"cudnn_conv_algo_search": search, "arena_extend_strategy": "kSameAsRequested"})])
            row = {}
            for n, h, w in shapes:
                x = np.random.default_rng(0).standard_normal((n, 3, h, w), dtype=np.float32).astype(np.float16 if fp16 else np.float32)
                t = time.perf_counter(); s.run(None, {"image": x}); first = time.perf_counter() - t
                ts = []
                for _ in range(7):
                    t = time.perf_counter(); s.run(None, {"image": x}); ts.append(time.perf_counter() - t)
                row[f"{n}x{h}x{w}"] = (round(first * 1e3, 1), round(statistics.median(ts) * 1e3, 2))
            key = f"vgg16 {'fp16' if fp16 else 'fp32'} {search}"
            out[key] = row
            print(key, row, flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
