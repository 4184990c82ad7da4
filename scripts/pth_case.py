#!/usr/bin/env python3
"""Make the PyTorch-checkpoint (.pth) cases: real torch.save output in both formats.

The official HRNet releases are `torch.save(model.module.state_dict(), ...)` from
PyTorch 1.0, the legacy (pre-1.6) format; PyTorch 1.6 and later write a zip archive.
hrnet reads both without running any code. This script writes, into --out:

  final_state_legacy.pth   the official model's state_dict (the --case's f32 weights,
                           loaded into the official PoseHighResolutionNet), legacy format
  checkpoint_f16.pth       a training checkpoint as tools/train.py saves it (epoch, model,
                           DataParallel `module.` keys under state_dict, perf, optimizer
                           state), the --case's f16 weights, zip format
  edge.pth, edge_legacy.pth, edge.json
                           odd tensor layouts (transposed, offset and shared storages,
                           parameters, every float dtype, scalars, empty) and the plain
                           values a checkpoint may hold, with the values torch reads back
and into --seeds (the fuzzer's seeds): min.pth, min_legacy.pth, two small tensors.

Needs torch and safetensors. Example (the committed tests/data/pth):
  python3 scripts/pth_case.py --official PATH --case tests/data/official-tiny \
      --out tests/data/pth --seeds fuzz/seeds/checkpoint
"""

import argparse
import collections
import json
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from official_case import load_official, official_cfg  # noqa: E402


def save_both(obj, out, stem):
    torch.save(obj, os.path.join(out, f"{stem}.pth"))
    torch.save(obj, os.path.join(out, f"{stem}_legacy.pth"), _use_new_zipfile_serialization=False)


def edge_state(gen):
    base = torch.arange(24, dtype=torch.float32) * 0.5 - 3.0
    sd = collections.OrderedDict()
    sd["transposed"] = base[:12].view(3, 4).t()  # strides (1, 4), shares base's storage
    sd["offset_view"] = base[12:].view(2, 3, 2)  # storage offset 12
    sd["whole"] = base
    sd["column"] = torch.randn(4, 5, generator=gen)[:, 1]  # stride 5, offset 1
    sd["half"] = torch.randn(2, 3, generator=gen).half()
    sd["bf16"] = torch.randn(5, generator=gen).bfloat16()
    sd["double"] = torch.randn(2, 2, generator=gen).double()
    sd["scalar"] = torch.tensor(1.5)
    sd["empty"] = torch.zeros(0, 3)
    sd["param"] = torch.nn.Parameter(torch.randn(3, generator=gen))
    sd["bn.num_batches_tracked"] = torch.tensor(7)
    return sd


def expected(sd):
    return {
        k: {
            "dtype": str(v.dtype).removeprefix("torch."),
            "shape": list(v.shape),
            "values": v.detach().double().flatten().tolist(),
        }
        for k, v in sd.items()
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", required=True, help="checkout or bare git dir of the official repo")
    ap.add_argument("--case", required=True, help="a folder made by official_case.py")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    os.makedirs(a.seeds, exist_ok=True)

    with open(os.path.join(a.case, "case.json")) as f:
        case = json.load(f)
    official, _ = load_official(a.official)
    model = official.PoseHighResolutionNet(official_cfg(case["width"], case["joints"]))
    model.load_state_dict(load_file(os.path.join(a.case, case["variants"]["f32"])), strict=True)
    torch.save(model.state_dict(), os.path.join(a.out, "final_state_legacy.pth"),
               _use_new_zipfile_serialization=False)

    half = load_file(os.path.join(a.case, case["variants"]["f16"]))
    model.load_state_dict(half, strict=True)
    model.half()
    wrapped = torch.nn.DataParallel(model)
    # Saved as it was before the optimizer's step below changes two of the parameters.
    state = collections.OrderedDict((k, v.clone()) for k, v in wrapped.state_dict().items())
    optimizer = torch.optim.Adam(list(model.parameters())[:2], lr=1e-3)
    for p in list(model.parameters())[:2]:
        p.grad = torch.ones_like(p)
    optimizer.step()
    torch.save({
        "epoch": 140,
        "model": "pose_hrnet",
        "state_dict": state,
        "perf": 0.744,
        "optimizer": optimizer.state_dict(),
    }, os.path.join(a.out, "checkpoint_f16.pth"))

    gen = torch.Generator().manual_seed(2019)
    sd = edge_state(gen)
    edge = {
        "epoch": 3, "perf": 0.71, "flags": [True, False, None], "name": "edge",
        "nested": ((1, 2.5), {"raw": b"bytes"}), "big": 2 ** 70, "negative": -123456789,
        "state_dict": sd,
    }
    save_both(edge, a.out, "edge")
    with open(os.path.join(a.out, "edge.json"), "w") as f:
        json.dump({"torch": torch.__version__, "tensors": expected(sd)}, f, indent=1)
        f.write("\n")

    small = collections.OrderedDict(w=torch.randn(2, 2, generator=gen), b=torch.randn(2, generator=gen).half())
    save_both(small, a.seeds, "min")
    print(f"wrote {a.out} and {a.seeds}/min*.pth with torch {torch.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main()
