#!/usr/bin/env python3
"""Run the official HRNet inference pipeline on images with COCO person detections.

Everything that decides a keypoint is the official code, imported from a copy of
leoxiaobin/deep-high-resolution-net.pytorch (a checkout, or a bare git directory whose
files are read at HEAD); none of it lives in this project:
  box -> center/scale   COCODataset._xywh2cs            (lib/dataset/coco.py)
  crop                  get_affine_transform + cv2.warpAffine, as JointsDataset.__getitem__
  normalise             torchvision ToTensor + Normalize, as tools/test.py
  network               PoseHighResolutionNet             (lib/models/pose_hrnet.py), float64
  flip test             input.flip(3), flip_back, SHIFT_HEATMAP, average (lib/core/function.py)
  decode                get_final_preds with POST_PROCESS (lib/core/inference.py)
The person score is the official rescoring of coco.py's evaluate: box score times the mean
of the keypoint scores above IN_VIS_THRE = 0.2, summed and divided in float32 as evaluate
does.

Writes --out: expected_flip.json and expected_noflip.json (COCO keypoint results, one per
detection, with and without the flip test; images in the order they first appear in the
detections file, each image's detections in file order), and expected_flip_oks_nms.json,
the results file of the official COCODataset.evaluate itself (rescoring, then oks_nms of
lib/nms/nms.py at TEST.OKS_THRE = 0.9, each image's people best first). Needs torch, torchvision, numpy, opencv-python,
safetensors. Example (the committed tests/data/official-pose):
  python3 scripts/official_pose_case.py --official PATH \
      --weights tests/data/official-tiny/weights.safetensors --width 4 \
      --images ../shared/data/coco-sample \
      --detections ../shared/data/coco-sample/test_coco_det_AP_H_56.json \
      --out tests/data/official-pose
"""

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import types

import cv2
import numpy as np
import torch
import torchvision.transforms as transforms
from safetensors.torch import load_file

FILES = ["lib/utils/transforms.py", "lib/core/inference.py", "lib/dataset/coco.py",
         "lib/dataset/JointsDataset.py", "lib/models/pose_hrnet.py", "lib/nms/nms.py"]
FLIP_PAIRS = [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [15, 16]]


def official_modules(path):
    """Lays the official files out as packages in a temp dir and imports them. Modules
    they import that inference does not use (pycocotools, the compiled box-NMS extensions)
    are stubbed; json_tricks, which only writes the results file, is the standard json."""
    root = tempfile.mkdtemp()
    for rel in FILES:
        if os.path.isfile(os.path.join(path, rel)):
            text = open(os.path.join(path, rel)).read()
        else:
            text = subprocess.run(["git", "--git-dir", path, "show", f"HEAD:{rel}"],
                                  check=True, capture_output=True, text=True).stdout
        dest = os.path.join(root, rel[len("lib/"):])
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        open(os.path.join(os.path.dirname(dest), "__init__.py"), "a").close()
        with open(dest, "w") as f:
            f.write(text)
    for name, attrs in {"pycocotools": [], "pycocotools.coco": ["COCO"],
                        "pycocotools.cocoeval": ["COCOeval"],
                        "nms.cpu_nms": ["cpu_nms"], "nms.gpu_nms": ["gpu_nms"]}.items():
        m = types.ModuleType(name)
        for a in attrs:
            setattr(m, a, None)
        sys.modules[name] = m
    sys.modules["json_tricks"] = json
    if not hasattr(np, "float"):
        np.float = float  # the alias the official results writer uses, gone from NumPy
    sys.path.insert(0, root)
    return (importlib.import_module("utils.transforms"), importlib.import_module("core.inference"),
            importlib.import_module("dataset.coco"), importlib.import_module("models.pose_hrnet"))


def model_cfg(width, joints):
    extra = {"FINAL_CONV_KERNEL": 1, "PRETRAINED_LAYERS": ["*"]}
    for s, m in zip((2, 3, 4), (1, 4, 3)):
        extra[f"STAGE{s}"] = {"NUM_MODULES": m, "NUM_BRANCHES": s, "BLOCK": "BASIC",
                              "NUM_BLOCKS": [4] * s, "NUM_CHANNELS": [width << b for b in range(s)],
                              "FUSE_METHOD": "SUM"}
    return {"MODEL": {"EXTRA": extra, "NUM_JOINTS": joints}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--width", type=int, required=True, help="branch-0 width of the checkpoint")
    ap.add_argument("--images", required=True)
    ap.add_argument("--detections", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    tr, inference, coco, pose_hrnet = official_modules(a.official)
    image_size = np.array([192, 256])  # MODEL.IMAGE_SIZE (width, height)
    geometry = types.SimpleNamespace(aspect_ratio=image_size[0] * 1.0 / image_size[1], pixel_std=200)
    test_cfg = types.SimpleNamespace(TEST=types.SimpleNamespace(POST_PROCESS=True))

    model = pose_hrnet.PoseHighResolutionNet(model_cfg(a.width, 17))
    model.load_state_dict(load_file(a.weights))
    model = model.double().eval()
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(
        mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])

    dets = [d for d in json.load(open(a.detections)) if d["category_id"] == 1 and d["score"] >= 0.0]
    crops, centers, scales, meta = [], [], [], []
    for image_id in dict.fromkeys(d["image_id"] for d in dets):
        path = os.path.join(a.images, "%012d.jpg" % image_id)
        img = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        for d in (d for d in dets if d["image_id"] == image_id):
            c, s = coco.COCODataset._xywh2cs(geometry, *d["bbox"][:4])
            trans = tr.get_affine_transform(c, s, 0, image_size)
            crop = cv2.warpAffine(img, trans, (int(image_size[0]), int(image_size[1])), flags=cv2.INTER_LINEAR)
            crops.append(transform(crop))
            centers.append(c)
            scales.append(s)
            meta.append(d)
    x = torch.stack(crops).double()

    results = {}
    with torch.no_grad():
        output = model(x)
        flipped = model(x.flip(3))
        flipped = torch.from_numpy(tr.flip_back(flipped.numpy(), FLIP_PAIRS).copy())
        flipped[:, :, :, 1:] = flipped.clone()[:, :, :, 0:-1]
        results["flip"] = ((output + flipped) * 0.5).numpy()
        results["noflip"] = output.numpy()

    os.makedirs(a.out, exist_ok=True)
    for name, heatmaps in results.items():
        preds, maxvals = inference.get_final_preds(test_cfg, heatmaps, np.array(centers), np.array(scales))
        out = []
        for d, p, m in zip(meta, preds, maxvals):
            kpt_score, valid = np.float32(0), 0
            for v in m[:, 0].astype(np.float32):
                if v > 0.2:
                    kpt_score, valid = kpt_score + v, valid + 1
            if valid:
                kpt_score = kpt_score / np.float32(valid)
            out.append({"image_id": d["image_id"], "category_id": 1,
                        "keypoints": [float(np.float32(v)) for k in range(17)
                                      for v in (p[k, 0], p[k, 1], m[k, 0])],
                        "score": float(kpt_score) * d["score"]})
        with open(os.path.join(a.out, f"expected_{name}.json"), "w") as f:
            json.dump(out, f)
        print(f"{name}: {len(out)} people", file=sys.stderr)

    # The official results file: COCODataset.evaluate on the flip-test predictions, laid
    # out as lib/core/function.py's validate lays them out.
    preds, maxvals = inference.get_final_preds(test_cfg, results["flip"], np.array(centers), np.array(scales))
    n = len(meta)
    all_preds = np.zeros((n, 17, 3), dtype=np.float32)
    all_preds[:, :, 0:2] = preds[:, :, 0:2]
    all_preds[:, :, 2:3] = maxvals
    s = np.array(scales, dtype=np.float32)
    all_boxes = np.zeros((n, 6))
    all_boxes[:, 0:2] = np.array(centers, dtype=np.float32)
    all_boxes[:, 2:4] = s
    all_boxes[:, 4] = np.prod(s * 200, 1)
    all_boxes[:, 5] = [d["score"] for d in meta]
    dataset = object.__new__(coco.COCODataset)
    dataset.image_set = "test2017"  # 'test': evaluate writes the results and skips COCOeval
    dataset.num_joints, dataset.in_vis_thre, dataset.oks_thre, dataset.soft_nms = 17, 0.2, 0.9, False
    dataset.classes, dataset._class_to_coco_ind = ["__background__", "person"], {"person": 1}
    work = tempfile.mkdtemp()
    dataset.evaluate(types.SimpleNamespace(RANK=0), all_preds, work, all_boxes,
                     ["%012d.jpg" % d["image_id"] for d in meta])
    with open(os.path.join(work, "results", "keypoints_test2017_results_0.json")) as f:
        kept = json.load(f)
    with open(os.path.join(a.out, "expected_flip_oks_nms.json"), "w") as f:
        json.dump(kept, f)
    print(f"flip, OKS NMS: {len(kept)} of {n} people kept", file=sys.stderr)
    with open(os.path.join(a.out, "case.json"), "w") as f:
        json.dump({"made_by": "scripts/official_pose_case.py", "weights": a.weights, "width": a.width,
                   "images": list(dict.fromkeys(d["image_id"] for d in dets)), "detections": len(meta),
                   "torch": torch.__version__, "opencv": cv2.__version__, "precision": "float64"}, f, indent=1)


if __name__ == "__main__":
    main()
