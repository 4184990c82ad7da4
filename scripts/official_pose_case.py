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
lib/nms/nms.py at TEST.OKS_THRE = 0.9, each image's people best first); with
--annotations, expected_gt_flip_oks_nms.json, the same for the people the official
COCODataset takes from a keypoint annotation file with TEST.USE_GT_BBOX
(_load_coco_keypoint_annotation_kernal: cleaned boxes, score 1); with --mpii-annotations,
expected_mpii_flip.json and expected_mpii_noflip.json (and expected_mpii_flip_pred.mat,
the official evaluate's pred.mat of the first), the MPII pipeline: the people of an
annotation file in the format of MPII's annot/valid.json as MPIIDataset._get_db takes them
(lib/dataset/mpii.py: float64 center and scale, moved and enlarged), 256x256 crops, MPII's
flip pairs, the checkpoint's first 16 heatmaps as MPII's joints, one result per person in
the file's order ({"image", "keypoints", "score", "center", "scale"}; the score is the
rescoring above with score 1). Needs torch, torchvision, numpy, opencv-python,
safetensors, pycocotools for --annotations and scipy for --mpii-annotations.
Example (the committed tests/data/official-pose):
  python3 scripts/official_pose_case.py --official PATH \
      --weights tests/data/official-tiny/weights.safetensors --width 4 \
      --images ../shared/data/coco-sample \
      --detections ../shared/data/coco-sample/test_coco_det_AP_H_56.json \
      --annotations ../shared/data/coco-sample/test_coco.json \
      --mpii-annotations tests/data/official-pose/mpii_valid.json --out tests/data/official-pose
tests/data/official-pose/mpii_valid.json places MPII-style people (1-based centers,
scale = box height / 200) on the COCO sample's annotated people, plus one more person of
an image after another image's, and one with the center x = -1 that MPII uses for "no
center".
"""

import argparse
import importlib
import importlib.util
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
         "lib/dataset/mpii.py", "lib/dataset/JointsDataset.py", "lib/models/pose_hrnet.py",
         "lib/nms/nms.py"]
FLIP_PAIRS = [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [15, 16]]
MPII_FLIP_PAIRS = [[0, 5], [1, 4], [2, 3], [10, 15], [11, 14], [12, 13]]


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
    stubs = {"nms.cpu_nms": ["cpu_nms"], "nms.gpu_nms": ["gpu_nms"]}
    if importlib.util.find_spec("pycocotools") is None:
        stubs.update({"pycocotools": [], "pycocotools.coco": ["COCO"], "pycocotools.cocoeval": ["COCOeval"]})
    for name, attrs in stubs.items():
        m = types.ModuleType(name)
        for a in attrs:
            setattr(m, a, None)
        sys.modules[name] = m
    sys.modules["json_tricks"] = json
    if not hasattr(np, "float"):
        np.float = float  # the alias the official results writer uses, gone from NumPy
    sys.path.insert(0, root)
    return (importlib.import_module("utils.transforms"), importlib.import_module("core.inference"),
            importlib.import_module("dataset.coco"), importlib.import_module("dataset.mpii"),
            importlib.import_module("models.pose_hrnet"))


def model_cfg(width, joints):
    extra = {"FINAL_CONV_KERNEL": 1, "PRETRAINED_LAYERS": ["*"]}
    for s, m in zip((2, 3, 4), (1, 4, 3)):
        extra[f"STAGE{s}"] = {"NUM_MODULES": m, "NUM_BRANCHES": s, "BLOCK": "BASIC",
                              "NUM_BLOCKS": [4] * s, "NUM_CHANNELS": [width << b for b in range(s)],
                              "FUSE_METHOD": "SUM"}
    return {"MODEL": {"EXTRA": extra, "NUM_JOINTS": joints}}


def official_ground_truth(coco, annotations, aspect_ratio):
    """The people of an annotation file as the official COCODataset takes them with
    TEST.USE_GT_BBOX: _load_coco_keypoint_annotation_kernal over coco.getImgIds(), on an
    object given the attributes COCODataset.__init__ gives it. (image_id, center, scale,
    score 1) each."""
    from pycocotools.coco import COCO
    ds = object.__new__(coco.COCODataset)
    ds.coco = COCO(annotations)
    ds.num_joints, ds.aspect_ratio, ds.pixel_std = 17, aspect_ratio, 200
    ds.root, ds.image_set, ds.data_format = "", "val2017", "jpg"
    cats = [c["name"] for c in ds.coco.loadCats(ds.coco.getCatIds())]
    ds.classes = ["__background__"] + cats
    to_ind = dict(zip(ds.classes, range(len(ds.classes))))
    to_coco = dict(zip(cats, ds.coco.getCatIds()))
    ds._coco_ind_to_class_ind = {to_coco[c]: to_ind[c] for c in ds.classes[1:]}
    return [(index, rec["center"], rec["scale"], 1.0)
            for index in ds.coco.getImgIds()
            for rec in ds._load_coco_keypoint_annotation_kernal(index)]


class Pipeline:
    """The official crop, network (float64), flip test and decoding for a list of people
    (image key, center, scale, box score); path_of gives an image key's file."""

    def __init__(self, tr, inference, pose_hrnet, width, state, image_size, flip_pairs, path_of):
        self.tr, self.inference, self.path_of = tr, inference, path_of
        self.image_size = np.array(image_size)  # MODEL.IMAGE_SIZE (width, height)
        self.flip_pairs = flip_pairs
        self.cfg = types.SimpleNamespace(TEST=types.SimpleNamespace(POST_PROCESS=True))
        model = pose_hrnet.PoseHighResolutionNet(model_cfg(width, state["final_layer.weight"].shape[0]))
        model.load_state_dict(state)
        self.model = model.double().eval()
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(
            mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])

    def heatmaps(self, people):
        loaded, crops = {}, []
        for key, c, s, _ in people:
            if key not in loaded:
                img = cv2.imread(self.path_of(key), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
                loaded[key] = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
            trans = self.tr.get_affine_transform(c, s, 0, self.image_size)
            crop = cv2.warpAffine(loaded[key], trans, (int(self.image_size[0]), int(self.image_size[1])),
                                  flags=cv2.INTER_LINEAR)
            crops.append(self.transform(crop))
        x = torch.stack(crops).double()
        with torch.no_grad():
            output = self.model(x)
            flipped = self.model(x.flip(3))
            flipped = torch.from_numpy(self.tr.flip_back(flipped.numpy(), self.flip_pairs).copy())
            flipped[:, :, :, 1:] = flipped.clone()[:, :, :, 0:-1]
            return {"flip": ((output + flipped) * 0.5).numpy(), "noflip": output.numpy()}

    def decode(self, people, heatmaps):
        centers = np.array([p[1] for p in people])
        scales = np.array([p[2] for p in people])
        return self.inference.get_final_preds(self.cfg, heatmaps, centers, scales)


def rescored(maxvals, score):
    """A person's score as coco.py's evaluate rescores it (float32 mean of the keypoint
    scores above 0.2, times the box score)."""
    kpt_score, valid = np.float32(0), 0
    for v in maxvals[:, 0].astype(np.float32):
        if v > 0.2:
            kpt_score, valid = kpt_score + v, valid + 1
    if valid:
        kpt_score = kpt_score / np.float32(valid)
    return float(kpt_score) * score


def flat_keypoints(p, m):
    """[x, y, score] per joint as the float32 all_preds of lib/core/function.py holds them."""
    return [float(np.float32(v)) for k in range(len(p)) for v in (p[k, 0], p[k, 1], m[k, 0])]


def per_box(people, preds, maxvals):
    """One result per person, rescored as coco.py's evaluate rescores (float32)."""
    return [{"image_id": image_id, "category_id": 1, "keypoints": flat_keypoints(p, m),
             "score": rescored(m, score)}
            for (image_id, _, _, score), p, m in zip(people, preds, maxvals)]


def official_mpii(mpii, annotations, images):
    """The people of an MPII annotation file as the official MPIIDataset._get_db takes them
    (image name, center, scale, score 1), on an object given the attributes
    MPIIDataset.__init__ gives it."""
    root = tempfile.mkdtemp()
    os.makedirs(os.path.join(root, "annot"))
    with open(annotations) as src, open(os.path.join(root, "annot", "valid.json"), "w") as dst:
        dst.write(src.read())
    ds = object.__new__(mpii.MPIIDataset)
    ds.root, ds.image_set, ds.data_format, ds.num_joints = root, "valid", "jpg", 16
    return [(os.path.relpath(rec["image"], os.path.join(root, "images")), rec["center"], rec["scale"], 1.0)
            for rec in ds._get_db()]


def mpii_case(a, tr, inference, mpii, pose_hrnet):
    """expected_mpii_flip.json and expected_mpii_noflip.json: the official MPII pipeline
    (256x256 crops, MPII's flip pairs) with the checkpoint's first 16 heatmaps as MPII's
    joints, one result per annotated person in the file's order."""
    state = load_file(a.weights)
    for k in ("final_layer.weight", "final_layer.bias"):
        state[k] = state[k][:16].clone()
    pipeline = Pipeline(tr, inference, pose_hrnet, a.width, state, [256, 256], MPII_FLIP_PAIRS,
                        lambda name: os.path.join(a.images, name))
    people = official_mpii(mpii, a.mpii_annotations, a.images)
    for name, h in pipeline.heatmaps(people).items():
        preds, maxvals = pipeline.decode(people, h)
        out = [{"image": image, "keypoints": flat_keypoints(p, m), "score": rescored(m, 1.0),
                "center": [float(v) for v in c], "scale": [float(v) for v in s]}
               for (image, c, s, _), p, m in zip(people, preds, maxvals)]
        write(a.out, f"expected_mpii_{name}.json", out)
        print(f"MPII {name}: {len(out)} people", file=sys.stderr)
        if name == "flip":
            # The official evaluate writes pred.mat (and, for a 'test' set, stops there).
            all_preds = np.zeros((len(people), 16, 3), dtype=np.float32)
            all_preds[:, :, 0:2] = preds[:, :, 0:2]
            all_preds[:, :, 2:3] = maxvals
            work = tempfile.mkdtemp()
            cfg = types.SimpleNamespace(DATASET=types.SimpleNamespace(TEST_SET="test"))
            mpii.MPIIDataset.evaluate(object.__new__(mpii.MPIIDataset), cfg, all_preds, work)
            os.replace(os.path.join(work, "pred.mat"), os.path.join(a.out, "expected_mpii_flip_pred.mat"))
    return len(people)


def official_results(coco, people, preds, maxvals):
    """The official results file: COCODataset.evaluate (rescoring, oks_nms at 0.9) on the
    predictions laid out as lib/core/function.py's validate lays them out."""
    n = len(people)
    all_preds = np.zeros((n, 17, 3), dtype=np.float32)
    all_preds[:, :, 0:2] = preds[:, :, 0:2]
    all_preds[:, :, 2:3] = maxvals
    s = np.array([p[2] for p in people], dtype=np.float32)
    all_boxes = np.zeros((n, 6))
    all_boxes[:, 0:2] = np.array([p[1] for p in people], dtype=np.float32)
    all_boxes[:, 2:4] = s
    all_boxes[:, 4] = np.prod(s * 200, 1)
    all_boxes[:, 5] = [p[3] for p in people]
    dataset = object.__new__(coco.COCODataset)
    dataset.image_set = "test2017"  # 'test': evaluate writes the results and skips COCOeval
    dataset.num_joints, dataset.in_vis_thre, dataset.oks_thre, dataset.soft_nms = 17, 0.2, 0.9, False
    dataset.classes, dataset._class_to_coco_ind = ["__background__", "person"], {"person": 1}
    work = tempfile.mkdtemp()
    dataset.evaluate(types.SimpleNamespace(RANK=0), all_preds, work, all_boxes,
                     ["%012d.jpg" % p[0] for p in people])
    with open(os.path.join(work, "results", "keypoints_test2017_results_0.json")) as f:
        return json.load(f)


def write(out, name, results):
    with open(os.path.join(out, name), "w") as f:
        json.dump(results, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--width", type=int, required=True, help="branch-0 width of the checkpoint")
    ap.add_argument("--images", required=True)
    ap.add_argument("--detections", required=True)
    ap.add_argument("--annotations", help="a COCO keypoint annotation file: also the GT-box case")
    ap.add_argument("--mpii-annotations",
                    help="an MPII annotation file (annot/valid.json format) for the same images: also the MPII case")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    tr, inference, coco, mpii, pose_hrnet = official_modules(a.official)
    pipeline = Pipeline(tr, inference, pose_hrnet, a.width, load_file(a.weights), [192, 256], FLIP_PAIRS,
                        lambda image_id: os.path.join(a.images, "%012d.jpg" % image_id))
    geometry = types.SimpleNamespace(aspect_ratio=192 / 256, pixel_std=200)
    os.makedirs(a.out, exist_ok=True)

    dets = [d for d in json.load(open(a.detections)) if d["category_id"] == 1 and d["score"] >= 0.0]
    people = [(image_id, *coco.COCODataset._xywh2cs(geometry, *d["bbox"][:4]), d["score"])
              for image_id in dict.fromkeys(d["image_id"] for d in dets)
              for d in dets if d["image_id"] == image_id]
    heatmaps = pipeline.heatmaps(people)
    for name, h in heatmaps.items():
        out = per_box(people, *pipeline.decode(people, h))
        write(a.out, f"expected_{name}.json", out)
        print(f"{name}: {len(out)} people", file=sys.stderr)
    kept = official_results(coco, people, *pipeline.decode(people, heatmaps["flip"]))
    write(a.out, "expected_flip_oks_nms.json", kept)
    print(f"flip, OKS NMS: {len(kept)} of {len(people)} people kept", file=sys.stderr)

    info = {"made_by": "scripts/official_pose_case.py", "weights": a.weights, "width": a.width,
            "images": list(dict.fromkeys(p[0] for p in people)), "detections": len(people),
            "torch": torch.__version__, "opencv": cv2.__version__, "precision": "float64"}
    if a.annotations:
        gt = official_ground_truth(coco, a.annotations, geometry.aspect_ratio)
        kept = official_results(coco, gt, *pipeline.decode(gt, pipeline.heatmaps(gt)["flip"]))
        write(a.out, "expected_gt_flip_oks_nms.json", kept)
        print(f"ground truth, flip, OKS NMS: {len(kept)} of {len(gt)} people kept", file=sys.stderr)
        info["ground_truth_people"] = len(gt)
    if a.mpii_annotations:
        info["mpii_people"] = mpii_case(a, tr, inference, mpii, pose_hrnet)
    with open(os.path.join(a.out, "case.json"), "w") as f:
        json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
