import glob, json, statistics, sys, time
import numpy as np, onnxruntime as ort
ort.preload_dlls()
shapes = [(1, 224, 224), (10, 224, 224), (5, 224, 224), (2, 256, 341), (2, 384, 512)]
out = {}
for store in sorted(glob.glob("/tmp/vdcache/store-*")):
    path = store + "/vgg16/model.onnx"
    fp16 = "fp16" in store
    for search in ("HEURISTIC", "EXHAUSTIVE", "DEFAULT"):
        o = ort.SessionOptions(); o.log_severity_level = 3
        s = ort.InferenceSession(path, o, providers=[("CUDAExecutionProvider", {"cudnn_conv_algo_search": search, "arena_extend_strategy": "kSameAsRequested"})])
        xs = [np.random.default_rng(0).standard_normal(sh[:1] + (3,) + sh[1:], dtype=np.float32).astype(np.float16 if fp16 else np.float32) for sh in shapes]
        ts = {i: [] for i in range(len(shapes))}
        for r in range(6):
            for i, x in enumerate(xs):
                t = time.perf_counter(); s.run(None, {"image": x}); e = time.perf_counter() - t
                if r >= 1: ts[i].append(e)
        key = f"vgg16 {'fp16' if fp16 else 'fp32'} {search} alternating"
        out[key] = {f"{sh[0]}x{sh[1]}x{sh[2]}": round(statistics.median(ts[i]) * 1e3, 2) for i, sh in enumerate(shapes)}
        print(key, out[key], flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
