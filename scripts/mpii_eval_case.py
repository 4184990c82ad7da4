#!/usr/bin/env python3
"""Make an MPII PCKh case with the official evaluation: MPIIDataset.evaluate of
lib/dataset/mpii.py, imported from a copy of leoxiaobin/deep-high-resolution-net.pytorch
(through scripts/official_pose_case.py's loader), over a made-up ground truth.

Writes --out:
  gt_valid.mat       the ground truth as annot/gt_valid.mat holds it (dataset_joints, a
                     cell array of MPII's 16 joint names; jnt_missing 16 x N; pos_gt_src
                     16 x 2 x N; headboxes_src 2 x 2 x N), zlib-compressed as MATLAB's -v7
  results.json       predictions as `hrnet pose` writes them for an MPII annotation file
                     (0-based float32 keypoints)
  pred.mat           the same predictions as the official evaluate writes them (preds + 1)
  expected.json      the official figures (Head ... Mean@0.1)
The people: predictions near the truth at errors spread over the thresholds, some far off,
some joints missing, every pelvis missing (a joint no one has: PCKh NaN there, left out of
the means as pelvis always is), and one person whose head box has no size.
Needs numpy, scipy and what scripts/official_pose_case.py imports.
Example (the committed tests/data/mpii-eval):
  python3 scripts/mpii_eval_case.py --official PATH --out tests/data/mpii-eval
"""

import argparse
import json
import os
import sys
import tempfile
import types

import numpy as np
from scipy.io import savemat

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from official_pose_case import official_modules  # noqa: E402

JOINTS = ["rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thor",
          "neck", "head", "rwri", "relb", "rsho", "lsho", "lelb", "lwri"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--people", type=int, default=80)
    ap.add_argument("--seed", type=int, default=2019)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    n = a.people

    corner = rng.uniform(50, 900, size=(2, n))
    size = rng.uniform(15, 80, size=(2, n))
    headboxes = np.stack([corner, corner + size])  # 2 x 2 x N: corner, coordinate, person
    headboxes[:, :, 3] = headboxes[0, :, 3]  # a head box of no size
    head = np.linalg.norm(headboxes[1] - headboxes[0], axis=0) * 0.6
    pos_gt = rng.uniform(1, 1000, size=(16, 2, n))
    missing = (rng.uniform(size=(16, n)) < 0.15).astype(np.float64)
    missing[6, :] = 1  # no pelvis anywhere
    # Errors in head sizes spread over the thresholds, some far off.
    err = np.where(rng.uniform(size=(16, n)) < 0.1, rng.uniform(1, 5, size=(16, n)),
                   rng.uniform(0, 0.6, size=(16, n)))
    angle = rng.uniform(0, 2 * np.pi, size=(16, n))
    offset = np.stack([np.cos(angle), np.sin(angle)], axis=1) * (err * np.maximum(head, 10))[:, None, :]
    all_preds = np.zeros((n, 16, 3), dtype=np.float32)
    all_preds[:, :, 0:2] = np.transpose(pos_gt + offset, [2, 0, 1]) - 1  # 0-based
    all_preds[:, :, 2] = rng.uniform(0, 1, size=(n, 16))

    dataset_joints = np.empty((1, 16), dtype=object)
    dataset_joints[0, :] = JOINTS
    root = tempfile.mkdtemp()
    os.makedirs(os.path.join(root, "annot"))
    gt = {"dataset_joints": dataset_joints, "jnt_missing": missing, "pos_gt_src": pos_gt,
          "headboxes_src": headboxes}
    os.makedirs(a.out, exist_ok=True)
    for folder in (root + "/annot", a.out):
        savemat(os.path.join(folder, "gt_valid.mat"), gt, do_compression=True)

    _, _, _, mpii, _ = official_modules(a.official)
    cfg = types.SimpleNamespace(DATASET=types.SimpleNamespace(ROOT=root, TEST_SET="valid"))
    with np.errstate(divide="ignore", invalid="ignore"):
        name_value, _ = mpii.MPIIDataset.evaluate(object.__new__(mpii.MPIIDataset), cfg, all_preds, a.out)

    results = [{"image": f"{p:09d}.jpg", "keypoints": [float(v) for v in all_preds[p].reshape(-1)],
                "score": 1.0, "center": [500.0, 500.0], "scale": [1.0, 1.0]} for p in range(n)]
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f)
    figures = {k: (None if np.ma.is_masked(v) or np.isnan(v) else float(v)) for k, v in name_value.items()}
    with open(os.path.join(a.out, "expected.json"), "w") as f:
        json.dump({"made_by": "scripts/mpii_eval_case.py", "people": n, "seed": a.seed,
                   "numpy": np.__version__, "figures": figures}, f, indent=1)
    for k, v in figures.items():
        print(f"{k}: {v}", file=sys.stderr)


if __name__ == "__main__":
    main()
