#!/usr/bin/env python3
"""Write crops made by OpenCV's cv2.warpAffine, which hrnet's crop must equal to the byte.

The official pipeline crops each person with
cv2.warpAffine(image, trans, (W, H), flags=cv2.INTER_LINEAR) (lib/dataset/JointsDataset.py),
trans from get_affine_transform: a scale, a rotation (0 at test time) and a shift.
tests/pose_pipeline.rs crops the same picture with the same maps through
hrnet::pose::crop::warp_affine and compares every byte.

The picture is seeded noise over gradients (61x47, RGB). The maps, float64 2x3 image-to-crop
matrices: the identity, whole- and half-pixel shifts, and seeded random scales (1/8 to 8),
rotations and shifts that put the crop inside the picture, across its borders, at its first
row and column (source positions in [0, 1), where the fractions are finest) and outside it.
Writes --out: source.png (the picture, lossless), maps.json ([[m00, m01, m02, m10, m11, m12],
...], each double written as Python's repr, which reads back to the same double) and
crops.npy (uint8, maps x 40 x 32 x 3, RGB as the picture).
Needs numpy and opencv-python(-headless). Example (the committed files):
  python3 scripts/warp_case.py --out tests/data/warp
"""

import argparse
import json
import math
import os

import cv2
import numpy as np

W, H = 32, 40


def picture(rng, w=61, h=47):
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / (w - 1), y * 255 / (h - 1), (x + y) * 255 / (w + h - 2)], -1)
    noise = rng.normal(0, 40, (h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def maps(rng, count):
    out = [
        [1, 0, 0, 0, 1, 0],
        [1, 0, -3, 0, 1, -2],
        [1, 0, -0.5, 0, 1, -0.5],
        [1, 0, 0.5, 0, 1, 0.25],
        [2, 0, 0, 0, 2, 0],
        [0.5, 0, 0, 0, 0.5, 0],
        [1, 0, 40, 0, 1, 30],
    ]
    while len(out) < count:
        s = 2.0 ** rng.uniform(-3, 3)
        t = rng.choice([0.0, rng.uniform(-math.pi, math.pi)])
        c, n = s * math.cos(t), s * math.sin(t)
        # Where crop pixel (0, 0) samples the picture: anywhere from outside to the far edge.
        x0, y0 = rng.uniform(-20, 70), rng.uniform(-20, 55)
        if rng.uniform() < 0.25:
            x0, y0 = rng.uniform(0, 1), rng.uniform(0, 1)
        # image-to-crop: crop = A (image - (x0, y0)), with A = [[c, n], [-n, c]].
        out.append([c, n, -(c * x0 + n * y0), -n, c, -(-n * x0 + c * y0)])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=2019)
    ap.add_argument("--maps", type=int, default=48)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    rgb = picture(rng)
    ms = maps(rng, a.maps)
    crops = np.stack(
        [cv2.warpAffine(rgb, np.array(m, np.float64).reshape(2, 3), (W, H), flags=cv2.INTER_LINEAR) for m in ms]
    )
    os.makedirs(a.out, exist_ok=True)
    cv2.imwrite(os.path.join(a.out, "source.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    with open(os.path.join(a.out, "maps.json"), "w") as f:
        f.write("[\n" + ",\n".join("  [" + ", ".join(repr(float(v)) for v in m) + "]" for m in ms) + "\n]\n")
    np.save(os.path.join(a.out, "crops.npy"), crops)
    print(f"{len(ms)} crops of {W}x{H} with OpenCV {cv2.__version__}")


if __name__ == "__main__":
    main()
