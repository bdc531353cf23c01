import glob, json, statistics, sys, time
import numpy as np, onnxruntime as ort
ort.preload_dlls()
shapes = [(1, 224, 224), (10, 224, 224), (2, 256, 341), (2, 384, 512), (2, 512, 682)]
variants = {
    "H+ws0": {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested", "cudnn_conv_use_max_workspace": "0"},
    "H+notf32": {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested", "use_tf32": "0"},
    "H+nhwc": {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested", "prefer_nhwc": "1"},
}
out = {}
def bench(run, xs, key):
    ts = {i: [] for i in range(len(xs))}
    for r in range(3):
        for i, x in enumerate(xs):
            t = time.perf_counter(); run(x); e = time.perf_counter() - t
            if r >= 1: ts[i].append(e)
    out[key] = {f"{sh[0]}x{sh[1]}x{sh[2]}": round(statistics.median(ts[i]) * 1e3, 2) for i, sh in enumerate(shapes)}
    print(key, out[key], flush=True)
for store in sorted(glob.glob("/tmp/vdcache/store-*")):
    path = store + "/vgg16/model.onnx"
    fp16 = "fp16" in store
    dt = np.float16 if fp16 else np.float32
    xs = [np.random.default_rng(0).standard_normal(sh[:1] + (3,) + sh[1:], dtype=np.float32).astype(dt) for sh in shapes]
    for name, opts in variants.items():
        if name == "H+notf32" and fp16: continue
        o = ort.SessionOptions(); o.log_severity_level = 3
        try:
            s = ort.InferenceSession(path, o, providers=[("CUDAExecutionProvider", opts)])
        except Exception as e:
            print(name, "failed", e); continue
        bench(lambda x: s.run(None, {"image": x}), xs, f"vgg16 {'fp16' if fp16 else 'fp32'} {name} alternating")
        del s
    import torch
    sys.path.insert(0, ".")
    from bench.models import VGG16, build_torch
    from training.fully_conv import to_fully_convolutional
    m = to_fully_convolutional(build_torch(VGG16)).eval().cuda().to(torch.float16 if fp16 else torch.float32)
    def trun(x):
        with torch.inference_mode():
            return m(torch.from_numpy(x).cuda()).float().cpu().numpy()
    bench(trun, xs, f"vgg16 {'fp16' if fp16 else 'fp32'} torch-eager alternating")
    del m; torch.cuda.empty_cache()
json.dump(out, open(sys.argv[1], "w"), indent=1)
