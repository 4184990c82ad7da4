#!/usr/bin/env python3
"""pycocotools' COCO keypoint evaluation on annotation/results pairs, for tests/coco_eval.rs.

Each pair is evaluated as the official HRNet evaluation does it (_do_python_keypoint_eval of
lib/dataset/coco.py): loadRes, COCOeval(gt, dt, "keypoints"), params.useSegm = None,
evaluate, accumulate, summarize. Written to --out/expected.json, per pair: the ten figures,
the interpolated precision (OKS threshold x recall point x category x area range) and the
recall (threshold x category x area range) at maxDets 20, and the lines summarize printed;
once: the OKS thresholds and recall points, and the versions used.

--synthetic also writes a made-up annotation file and results for it (seeded) that reach
the corners of the rules: crowds, people without labelled keypoints, every area range, an
annotation with id 0, images without people or without results, more than 20 results in an
image, tied scores, results of an unlisted category. --sample takes the COCO sample's
annotation file and writes results made from its people with noise.

Example (the committed tests/data/coco-eval):
  python3 scripts/coco_eval_case.py --synthetic --sample ../shared/data/coco-sample/test_coco.json \
      --pair sample:official-gt=tests/data/official-pose/expected_gt_flip_oks_nms.json \
      --pair sample:official-det=tests/data/official-pose/expected_flip_oks_nms.json \
      --out tests/data/coco-eval
Pairs name their annotation file "synthetic" or "sample" (the files above), or a path.
"""

import argparse
import contextlib
import importlib.metadata
import io
import json
import os
import sys

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def synthetic_annotations(rng):
    """A keypoint annotation file: 40 images listed out of order, people of every size."""
    images, anns = [], []
    ids = rng.permutation(np.arange(1000, 1040))
    for image_id in ids:
        images.append({"id": int(image_id), "width": 640, "height": 480, "file_name": f"{image_id}.jpg"})
    next_id = 1
    for image_id in ids:
        for _ in range(int(rng.integers(0, 7))):
            side = float(rng.choice([12.0, 24.0, 48.0, 90.0, 160.0, 300.0])) * rng.uniform(0.7, 1.3)
            w, h = side * rng.uniform(0.4, 0.8), side
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            crowd = rng.random() < 0.08
            kp = []
            for _ in range(17):
                v = 0 if crowd else int(rng.choice([0, 1, 2], p=[0.25, 0.25, 0.5]))
                if rng.random() < 0.1:
                    v = 0
                kp += [int(x + rng.uniform(0, w)), int(y + rng.uniform(0, h)), v] if v else [0, 0, 0]
            anns.append({"id": next_id, "image_id": int(image_id), "category_id": 1, "iscrowd": int(crowd),
                         "area": round(w * h * rng.uniform(0.45, 0.9), 4),
                         "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                         "keypoints": kp, "num_keypoints": sum(1 for v in kp[2::3] if v > 0)})
            next_id += 1
    # One annotation with id 0, which pycocotools cannot tell from "no match".
    anns[3]["id"] = 0
    cats = [{"id": 1, "name": "person", "supercategory": "person"}]
    return {"images": images, "annotations": anns, "categories": cats}


def noisy_results(gt, rng, crowded_image=True):
    """Results for an annotation file: most people found with noise of varying size, some
    twice, false positives, scores with ties, one image with 25 results."""
    results = []
    people = [a for a in gt["annotations"] if not a["iscrowd"]]
    for a in people:
        x, y, w, h = a["bbox"]
        for copy in range(int(rng.choice([0, 1, 1, 1, 2]))):
            spread = np.sqrt(max(a["area"], 1.0)) * rng.choice([0.01, 0.05, 0.1, 0.3])
            kp = []
            for j in range(17):
                gx, gy, v = a["keypoints"][3 * j:3 * j + 3]
                if not v:
                    gx, gy = x + rng.uniform(0, w), y + rng.uniform(0, h)
                kp += [float(gx + rng.normal(0, spread)), float(gy + rng.normal(0, spread)),
                       float(rng.uniform(0, 1))]
            score = float(rng.choice([round(rng.uniform(0, 1), 2), rng.uniform(0, 1)]))
            results.append({"image_id": a["image_id"], "category_id": 1, "keypoints": kp, "score": score})
    image_ids = [i["id"] for i in gt["images"]]
    for _ in range(len(image_ids)):
        image_id = int(rng.choice(image_ids))
        cx, cy, s = rng.uniform(0, 640), rng.uniform(0, 480), rng.choice([5.0, 40.0, 150.0])
        kp = []
        for _ in range(17):
            kp += [float(cx + rng.normal(0, s)), float(cy + rng.normal(0, s)), float(rng.uniform(0, 1))]
        results.append({"image_id": image_id, "category_id": int(rng.choice([1, 1, 1, 2])),
                         "keypoints": kp, "score": float(round(rng.uniform(0, 1), 1))})
    if crowded_image:
        busy = max(set(a["image_id"] for a in people), key=lambda i: sum(a["image_id"] == i for a in people))
        template = next(a for a in people if a["image_id"] == busy)
        for n in range(25):
            kp = [float(v + rng.normal(0, 4.0)) if k % 3 < 2 else 0.5 for k, v in enumerate(template["keypoints"])]
            results.append({"image_id": busy, "category_id": 1, "keypoints": kp, "score": float(0.3 + 0.01 * (n % 7))})
    order = rng.permutation(len(results))
    return [results[i] for i in order]


def evaluate(annotations, results_file):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(annotations)
        dt = coco.loadRes(results_file)
        e = COCOeval(coco, dt, "keypoints")
        e.params.useSegm = None
        e.evaluate()
        e.accumulate()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        e.summarize()
    return e, printed.getvalue().splitlines()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synthetic", action="store_true", help="write and evaluate the synthetic case")
    ap.add_argument("--sample", help="the COCO sample's annotation file: also its noisy-results case")
    ap.add_argument("--pair", action="append", default=[], metavar="ANNOTATIONS:NAME=RESULTS")
    ap.add_argument("--seed", type=int, default=2019)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    files, pairs = {}, []

    def save(name, obj):
        path = os.path.join(a.out, name)
        with open(path, "w") as f:
            json.dump(obj, f)
        return path

    if a.synthetic:
        gt = synthetic_annotations(rng)
        files["synthetic"] = save("synthetic_annotations.json", gt)
        pairs.append(("synthetic", "synthetic", save("synthetic_results.json", noisy_results(gt, rng))))
    if a.sample:
        files["sample"] = a.sample
        gt = json.load(open(a.sample))
        pairs.append(("sample", "sample-noisy",
                      save("sample_results.json", noisy_results(gt, rng, crowded_image=False))))
    for p in a.pair:
        ann, rest = p.split(":", 1)
        name, results = rest.split("=", 1)
        pairs.append((ann, name, results))

    cases = []
    for ann, name, results in pairs:
        e, lines = evaluate(files.get(ann, ann), results)
        precision = e.eval["precision"][:, :, :, :, 0]
        recall = e.eval["recall"][:, :, :, 0]
        cases.append({"name": name, "annotations": ann, "results": os.path.relpath(results),
                      "stats": [float(v) for v in e.stats],
                      "precision": [float(v) for v in precision.ravel()],
                      "recall": [float(v) for v in recall.ravel()],
                      "summary": lines})
        print(f"{name}: AP {e.stats[0]:.4f}, AR {e.stats[5]:.4f}", file=sys.stderr)
    p = COCOeval(iouType="keypoints").params
    save("expected.json", {"made_by": "scripts/coco_eval_case.py", "seed": a.seed,
                           "pycocotools": importlib.metadata.version("pycocotools"), "numpy": np.__version__,
                           "oks_thresholds": [float(v) for v in p.iouThrs],
                           "recall_thresholds": [float(v) for v in p.recThrs], "cases": cases})


if __name__ == "__main__":
    main()
