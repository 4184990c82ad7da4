#!/usr/bin/env python3
"""The PyTorch peer of hrnet: the same network as a PyTorch module of our own (official
state_dict key names), loading the same safetensors checkpoint, checked equal to hrnet's
heatmaps, then timed in PyTorch's usual configurations.

  check:  python3 scripts/peer_pytorch.py --weights W.safetensors --input x.npy \
              --reference heatmaps.npy [--device cpu|cuda]
          (heatmaps.npy from `hrnet forward` on the same input; prints the relative L2
          error and argmax agreement, exits 1 above --tolerance)
  accuracy: python3 scripts/peer_pytorch.py --weights W.safetensors --input x.npy \
              --accuracy hrnet-f32.npy hrnet-f16.npy [--device cuda]
          (the network in float64 as the reference; PyTorch fp32 without TF32 and fp16
          channels_last, and each hrnet heatmaps file, against it: relative L2 error and
          argmax agreement, JSON lines)
  time:   python3 scripts/peer_pytorch.py --weights W.safetensors --time --batches 1,8,32,64 \
              [--configs eager_fp32,...]
          (CUDA only: eager fp32 with PyTorch's defaults (TF32 convolutions), eager fp16
          channels_last, fp16 under CUDA graphs, torch.compile(mode="max-autotune") fp16;
          CUDA-event medians after warm-up, torch.cuda.max_memory_allocated; JSON lines)

Needs torch, numpy, safetensors.
"""

import argparse
import contextlib
import json
import statistics
import sys

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn


def conv_bn(cin, cout, k, stride):
    """A bias-free conv followed by BN, as `nn.Sequential` keys `.0` and `.1`."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class Basic(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + x)


class Bottleneck(nn.Module):
    def __init__(self, cin, planes, down):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, 4 * planes, 1, bias=False), nn.BatchNorm2d(4 * planes)
        self.downsample = conv_bn(cin, 4 * planes, 1, 1) if down else None

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        shortcut = self.downsample(x) if self.downsample is not None else x
        return torch.relu(self.bn3(self.conv3(y)) + shortcut)


class Exchange(nn.Module):
    """One module of a stage: BasicBlocks per branch, then the multi-resolution fusion."""

    def __init__(self, widths, blocks, outputs):
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(*[Basic(c) for _ in range(n)]) for c, n in zip(widths, blocks))
        self.fuse_layers = nn.ModuleList()
        for i in range(outputs):
            row = nn.ModuleList()
            for j, cj in enumerate(widths):
                if j > i:
                    row.append(nn.Sequential(nn.Conv2d(cj, widths[i], 1, bias=False), nn.BatchNorm2d(widths[i]),
                                             nn.Upsample(scale_factor=2 ** (j - i), mode="nearest")))
                elif j == i:
                    row.append(nn.Identity())
                else:
                    steps = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        step = conv_bn(cj, widths[i] if last else cj, 3, 2)
                        if not last:
                            step.append(nn.ReLU())
                        steps.append(step)
                    row.append(nn.Sequential(*steps))
            self.fuse_layers.append(row)

    def forward(self, xs):
        xs = [b(x) for b, x in zip(self.branches, xs)]
        out = []
        for row in self.fuse_layers:
            y = row[0](xs[0])
            for f, x in zip(list(row)[1:], xs[1:]):
                y = y + f(x)
            out.append(torch.relu(y))
        return out


class Hrnet(nn.Module):
    """HRNet with the official parameter names; widths and joints come from the checkpoint."""

    def __init__(self, width, joints, modules=(1, 4, 3)):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64)
        self.conv2, self.bn2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64)
        self.layer1 = nn.Sequential(*[Bottleneck(64 if i == 0 else 256, 64, i == 0) for i in range(4)])
        before = [256]
        for s, m in zip((2, 3, 4), modules):
            widths = [width << b for b in range(s)]
            trans = nn.ModuleList()
            for i, c in enumerate(widths):
                if i < len(before):
                    trans.append(nn.Sequential(*conv_bn(before[i], c, 3, 1), nn.ReLU()) if before[i] != c else nn.Identity())
                else:
                    trans.append(nn.Sequential(nn.Sequential(*conv_bn(before[-1], c, 3, 2), nn.ReLU())))
            setattr(self, f"transition{s - 1}", trans)
            setattr(self, f"stage{s}", nn.Sequential(*[
                Exchange(widths, [4] * s, 1 if (s == 4 and k == m - 1) else s) for k in range(m)]))
            before = widths
        self.final_layer = nn.Conv2d(width, joints, 1)

    def forward(self, x):
        x = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        xs = [self.layer1(x)]
        for s in (2, 3, 4):
            trans = getattr(self, f"transition{s - 1}")
            xs = [t(xs[i] if i < len(xs) else xs[-1]) for i, t in enumerate(trans)]
            xs = getattr(self, f"stage{s}")(xs)
        return self.final_layer(xs[0])


def load(weights):
    state = {k.removeprefix("module."): v for k, v in load_file(weights).items()}
    width = state["stage2.0.branches.0.0.conv1.weight"].shape[0]
    joints = state["final_layer.weight"].shape[0]
    modules = tuple(len({k.split(".")[1] for k in state if k.startswith(f"stage{s}.")}) for s in (2, 3, 4))
    model = Hrnet(width, joints, modules)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval()


def check(a):
    device = torch.device(a.device)
    model = load(a.weights).to(device)
    x = torch.from_numpy(np.load(a.input).astype(np.float32)).to(device)
    # The check asks whether the two networks are the same, so both run in full f32:
    # PyTorch's default TF32 convolutions alone land about 1e-3 away.
    with torch.no_grad(), full_f32():
        out = model(x).double().cpu().numpy()
    ref = np.load(a.reference).astype(np.float64)
    rel, agree = scores(out, ref)
    print(json.dumps({"check": "pytorch vs hrnet", "device": a.device, "relative_l2": rel, "argmax_agreement": agree}))
    return 0 if rel <= a.tolerance and agree == 1.0 else 1


def scores(out, ref):
    """Relative L2 error and per-map argmax agreement of `out` against `ref` (N×K×H×W)."""
    rel = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    n, k = ref.shape[:2]
    agree = float((out.reshape(n * k, -1).argmax(1) == ref.reshape(n * k, -1).argmax(1)).mean())
    return rel, agree


@contextlib.contextmanager
def full_f32():
    """PyTorch's f32 convolutions and matrix products without TF32, restored afterwards."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def accuracy(a):
    device = torch.device(a.device)
    x = torch.from_numpy(np.load(a.input).astype(np.float32)).to(device)
    with torch.no_grad(), full_f32():
        ref = load(a.weights).double().to(device)(x.double()).cpu().numpy()
        runs = [("pytorch", "fp32 (no TF32)", load(a.weights).to(device)(x))]
        half = load(a.weights).half().to(device).to(memory_format=torch.channels_last)
        runs.append(("pytorch", "fp16 channels_last", half(x.half().contiguous(memory_format=torch.channels_last))))
    rows = [(engine, what, out.double().contiguous().cpu().numpy()) for engine, what, out in runs]
    rows += [("hrnet", path, np.load(path).astype(np.float64)) for path in a.accuracy]
    for engine, what, out in rows:
        if out.shape != ref.shape:
            print(json.dumps({"accuracy": engine, "heatmaps": what, "error": f"shape {out.shape}, expected {ref.shape}"}))
            return 1
        rel, agree = scores(out, ref)
        print(json.dumps({"accuracy": engine, "heatmaps": what, "device": a.device, "relative_l2": rel, "argmax_agreement": agree}))
    return 0


def time_one(fn, x, runs, warmup):
    for _ in range(warmup):
        fn(x)
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(x)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


CONFIGS = ("eager_fp32", "eager_fp16_channels_last", "cuda_graph_fp16", "compile_max_autotune_fp16")


def timings(a):
    """Each configuration in turn, over every batch: one model per configuration, freed
    before the next, so that each peak holds only its own weights and activations."""
    if not torch.cuda.is_available():
        print("timing needs CUDA", file=sys.stderr)
        return 1
    h, w = (int(v) for v in a.input_size.split("x"))
    for name in a.configs.split(","):
        if name not in CONFIGS:
            print(f"unknown configuration {name!r} (one of {', '.join(CONFIGS)})", file=sys.stderr)
            return 1
        fp16 = "fp16" in name
        for batch in (int(b) for b in a.batches.split(",")):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            # Converted to fp16 on the host: the peak never holds an fp32 copy of the weights.
            model = load(a.weights)
            x = torch.randn(batch, 3, h, w, device="cuda")
            if fp16:
                model = model.half().to(memory_format=torch.channels_last)
                x = x.half().contiguous(memory_format=torch.channels_last)
            model = model.cuda()
            with torch.no_grad():
                if name == "cuda_graph_fp16":
                    static_x = x.clone()
                    stream = torch.cuda.Stream()
                    stream.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(stream):
                        for _ in range(3):
                            model(static_x)
                    torch.cuda.current_stream().wait_stream(stream)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        static_y = model(static_x)
                    fn = lambda inp: (static_x.copy_(inp), graph.replay(), static_y)  # noqa: E731
                elif name == "compile_max_autotune_fp16":
                    fn = torch.compile(model, mode="max-autotune")
                else:
                    fn = model
                ms = time_one(fn, x, a.runs, a.warmup)
            print(json.dumps({"engine": "pytorch", "config": name, "precision": "f16" if fp16 else "f32",
                              "batch": batch, "median_ms": ms, "images_per_s": batch * 1000.0 / ms,
                              "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
                              "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
            del model, x, fn
            if name == "cuda_graph_fp16":
                del graph, static_x, static_y
    return 0


def peaks(a):
    """The two ceilings, measured: fp16 tensor-core rate (an 8192^3 matmul on random data) and
    device memory bandwidth (a 2 GiB copy, bytes read plus written)."""
    if not torch.cuda.is_available():
        print("measuring peaks needs CUDA", file=sys.stderr)
        return 1
    n = 8192
    x = torch.randn(n, n, device="cuda", dtype=torch.float16)
    y = torch.randn(n, n, device="cuda", dtype=torch.float16)
    ms = time_one(lambda inp: inp @ y, x, 50, 10)
    src = torch.randn(2**29, device="cuda")  # 2 GiB of f32
    dst = torch.empty_like(src)
    copy_ms = time_one(lambda inp: dst.copy_(inp), src, 50, 5)
    print(json.dumps({"peak": "measured", "fp16_matmul_tflops": 2 * n**3 / ms / 1e9,
                      "copy_gb_per_s": 2 * src.numel() * 4 / copy_ms / 1e6,
                      "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="the safetensors both engines load (all but --peaks need it)")
    ap.add_argument("--input")
    ap.add_argument("--reference")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--accuracy", nargs="+", metavar="HEATMAPS", help="hrnet heatmaps (.npy) to score against float64")
    ap.add_argument("--time", action="store_true")
    ap.add_argument("--peaks", action="store_true", help="measure the fp16 matmul rate and copy bandwidth")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help="the timed configurations, in order (torch.compile's autotuning takes minutes: "
                         "the device script runs it as a step of its own)")
    ap.add_argument("--input-size", default="256x192")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    a = ap.parse_args()
    if not a.weights and (a.time or a.reference or a.accuracy):
        ap.error("--weights is needed to check or time the network")
    if not (a.peaks or a.time or (a.input and (a.reference or a.accuracy))):
        ap.error("nothing to do: give --peaks, --time, or --input with --reference or --accuracy")
    status = 0
    if a.input and a.reference:
        status |= check(a)
    if a.input and a.accuracy:
        status |= accuracy(a)
    if a.peaks:
        status |= peaks(a)
    if a.time:
        status |= timings(a)
    return status


if __name__ == "__main__":
    sys.exit(main())
