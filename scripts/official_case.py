#!/usr/bin/env python3
"""Make an end-to-end reference case with the official HRNet model, in float64.

The official `lib/models/pose_hrnet.py` is imported from a copy of
leoxiaobin/deep-high-resolution-net.pytorch (a checkout, or a bare git directory from
which the file is read at HEAD); none of its code lives in this project.

Writes, into --out:
  weights.safetensors          the state_dict (official keys, float32, num_batches_tracked)
  weights_f16.safetensors      the same weights in float16   (with --half)
  weights_bf16.safetensors     the same weights in bfloat16  (with --half)
  input.npy                    float32 N x 3 x H x W, standard normal
  heatmaps_f64.npy             the official model in float64 on the float32 weights
  heatmaps_f64_f16.npy         ... on the float16 weights     (with --half)
  heatmaps_f64_bf16.npy        ... on the bfloat16 weights    (with --half)
  case.json                    how the case was made

Random weights: PyTorch's default conv initialisation, BN gamma in [0.5, 0.9), beta and
the head bias in [-0.1, 0.1); BN running statistics calibrated by running the model in
train mode (cumulative averages) on random batches, as training would leave them.

Needs torch, numpy and safetensors. Example (the committed tests/data/official-tiny):
  python3 scripts/official_case.py --official PATH --width 8 --input 96x64 --batch 2 \
      --half --out tests/data/official-tiny
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import save_file

PRESETS = {
    "w32-256x192": (32, 17, "256x192"),
    "w32-384x288": (32, 17, "384x288"),
    "w48-256x192": (48, 17, "256x192"),
    "w48-384x288": (48, 17, "384x288"),
    "w32-256x256-mpii": (32, 16, "256x256"),
    "w48-256x256-mpii": (48, 16, "256x256"),
    "w18-256x192": (18, 17, "256x192"),
}


def load_official(path):
    """Imports pose_hrnet.py from a checkout or a bare git directory."""
    rel = "lib/models/pose_hrnet.py"
    src = os.path.join(path, rel)
    commit = "working tree"
    if not os.path.isfile(src):
        text = subprocess.run(["git", "--git-dir", path, "show", f"HEAD:{rel}"],
                              check=True, capture_output=True, text=True).stdout
        commit = subprocess.run(["git", "--git-dir", path, "rev-parse", "HEAD"],
                                check=True, capture_output=True, text=True).stdout.strip()
        src = os.path.join(tempfile.mkdtemp(), "pose_hrnet.py")
        with open(src, "w") as f:
            f.write(text)
    spec = importlib.util.spec_from_file_location("pose_hrnet", src)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, commit


def official_cfg(width, joints, modules=(1, 4, 3), blocks=4):
    extra = {"FINAL_CONV_KERNEL": 1, "PRETRAINED_LAYERS": ["*"]}
    for s, m in zip((2, 3, 4), modules):
        extra[f"STAGE{s}"] = {
            "NUM_MODULES": m, "NUM_BRANCHES": s, "BLOCK": "BASIC",
            "NUM_BLOCKS": [blocks] * s, "NUM_CHANNELS": [width << b for b in range(s)],
            "FUSE_METHOD": "SUM",
        }
    return {"MODEL": {"EXTRA": extra, "NUM_JOINTS": joints}}


def randomise(model, h, w, gen, batches=4):
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.5, 0.9, generator=gen)
            bn.bias.uniform_(-0.1, 0.1, generator=gen)
            bn.momentum = None  # cumulative average over the calibration batches
            bn.reset_running_stats()
        model.final_layer.bias.uniform_(-0.1, 0.1, generator=gen)
        model.train()
        for _ in range(batches):
            model(torch.randn(4, 3, h, w, generator=gen))
    model.eval()


def run_f64(model, state, x):
    model = model.double()
    model.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in state.items()})
    with torch.no_grad():
        return model(x.double()).numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", required=True, help="checkout or bare git dir of the official repo")
    ap.add_argument("--preset", choices=sorted(PRESETS), help="an official preset (else --width)")
    ap.add_argument("--width", type=int, default=8, help="branch-0 width of a reduced network")
    ap.add_argument("--joints", type=int, default=17)
    ap.add_argument("--input", default=None, help="HxW, multiples of 32")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=2019)
    ap.add_argument("--half", action="store_true", help="also f16 and bf16 checkpoints")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    official, commit = load_official(a.official)
    width, joints, size = PRESETS[a.preset] if a.preset else (a.width, a.joints, a.input or "96x64")
    if a.input:
        size = a.input
    h, w = (int(v) for v in size.lower().split("x"))
    gen = torch.Generator().manual_seed(a.seed)
    torch.manual_seed(a.seed)
    model = official.PoseHighResolutionNet(official_cfg(width, joints))
    randomise(model, h, w, gen)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}

    os.makedirs(a.out, exist_ok=True)
    x = torch.randn(a.batch, 3, h, w, generator=gen)
    np.save(os.path.join(a.out, "input.npy"), x.numpy().astype(np.float32))
    save_file(state, os.path.join(a.out, "weights.safetensors"))
    ref = run_f64(model, state, x)
    np.save(os.path.join(a.out, "heatmaps_f64.npy"), ref)
    variants = {"f32": "weights.safetensors"}
    if a.half:
        for name, dtype in (("f16", torch.float16), ("bf16", torch.bfloat16)):
            low = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
            save_file(low, os.path.join(a.out, f"weights_{name}.safetensors"))
            np.save(os.path.join(a.out, f"heatmaps_f64_{name}.npy"), run_f64(model, low, x))
            variants[name] = f"weights_{name}.safetensors"

    # PyTorch's own float32 on the same case, for scale.
    model32 = model.float()
    model32.load_state_dict(state)
    with torch.no_grad():
        out32 = model32(x).numpy().astype(np.float64)
    rel32 = float(np.linalg.norm(out32 - ref) / np.linalg.norm(ref))
    info = {
        "made_by": "scripts/official_case.py",
        "official_repo": "leoxiaobin/deep-high-resolution-net.pytorch",
        "official_commit": commit,
        "torch": torch.__version__,
        "preset": a.preset,
        "width": width, "joints": joints, "input": [h, w], "batch": a.batch, "seed": a.seed,
        "tensors": len(state),
        "variants": variants,
        "heatmap_rms": float(np.sqrt((ref ** 2).mean())),
        "torch_f32_relative_l2": rel32,
    }
    with open(os.path.join(a.out, "case.json"), "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    print(json.dumps(info), file=sys.stderr)


if __name__ == "__main__":
    main()
