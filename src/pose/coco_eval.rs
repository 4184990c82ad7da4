//! COCO keypoint evaluation: average precision and recall over OKS thresholds, computed
//! as pycocotools' `COCOeval(ground_truth, results, "keypoints")` computes them
//! (`evaluate`, `accumulate`, `summarize`), which is the evaluation the official code
//! reports (`_do_python_keypoint_eval` of `lib/dataset/coco.py`).
//!
//! The rules, pycocotools' own:
//! - a result's area is that of its keypoints' bounding box (`loadRes`);
//! - a ground-truth person is ignored if crowd or without labelled keypoints
//!   (`num_keypoints` 0), and for an area range also when its `area` lies outside;
//! - per image and category, the 20 best-scored results (`maxDets`) are matched greedily,
//!   best first, each to the unmatched ground truth of highest OKS at or above the
//!   threshold (crowds may match many; a match to an ignored person is ignored, and so is
//!   an unmatched result outside the area range);
//! - OKS: `exp(-d²/(2·s²·(2σ)²))` averaged over the person's labelled joints, `s²` the
//!   annotation's area; a person without labelled joints measures the distance to a box
//!   three times its own;
//! - precision is interpolated (the best precision at any higher recall) at the 101
//!   recalls 0, 0.01, …, 1, for the 10 OKS thresholds 0.5, 0.55, …, 0.95; AP is the mean
//!   over thresholds, recalls and categories, AR the mean recall.
//!
//! The arithmetic is float64 in pycocotools' order, NumPy's sums included, so that the
//! figures agree to the last bit or nearly (`tests/coco_eval.rs` checks them against
//! pycocotools).
//!
//! ```
//! use hrnet::pose::coco_eval::{GroundTruth, KeypointResult, evaluate_keypoints};
//!
//! let joints = vec!["40, 60, 2"; 17].join(", ");
//! let file = format!(
//!     r#"{{"images": [{{"id": 9}}], "categories": [{{"id": 1}}],
//!          "annotations": [{{"id": 1, "image_id": 9, "category_id": 1, "iscrowd": 0,
//!                            "area": 5000, "bbox": [20, 10, 50, 100],
//!                            "keypoints": [{joints}], "num_keypoints": 17}}]}}"#
//! );
//! // `GroundTruth::load("person_keypoints_val2017.json")` for a real file.
//! let gt = GroundTruth::parse(&file, "inline.json".as_ref())?;
//! let found = KeypointResult {
//!     image_id: 9,
//!     category_id: 1,
//!     keypoints: [41.0, 60.5, 0.9].repeat(17),
//!     score: 0.8,
//! };
//! let e = evaluate_keypoints(&gt, &[found])?;
//! // AP: one person, found within every OKS threshold (precision is pycocotools'
//! // tp / (tp + fp + ε), a hair under 1).
//! assert!((e.stats[0] - 1.0).abs() < 1e-15);
//! assert_eq!(e.stats[4], -1.0); // AP (L): no person of 96² or more to find
//! # Ok::<(), hrnet::Error>(())
//! ```

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::Deserialize;

use super::io::{CocoResult, parse_json, read_json};
use super::nms::{COCO_SIGMAS_X10, coco_variances};
use super::numpy;
use crate::error::{Error, Result};

/// The ten summary figures, named as the official evaluation names them.
pub const STAT_NAMES: [&str; 10] = [
    "AP", "Ap .5", "AP .75", "AP (M)", "AP (L)", "AR", "AR .5", "AR .75", "AR (M)", "AR (L)",
];

/// Results per image and category that count (pycocotools' `maxDets` for keypoints).
pub const MAX_RESULTS_PER_IMAGE: usize = 20;

/// The area ranges: all, medium (32² to 96²), large (96² and more).
const AREA_RANGES: [(f64, f64); 3] = [(0.0, 1e10), (1024.0, 9216.0), (9216.0, 1e10)];
const T: usize = 10;
const R: usize = 101;
const A: usize = AREA_RANGES.len();
const JOINTS: usize = COCO_SIGMAS_X10.len();

/// `np.linspace(start, stop, n)`: `i·step + start`, the last value `stop` itself.
fn linspace<const N: usize>(start: f64, stop: f64) -> [f64; N] {
    let step = (stop - start) / (N - 1) as f64;
    let mut v = [0.0; N];
    for (i, x) in v.iter_mut().enumerate() {
        *x = i as f64 * step + start;
    }
    v[N - 1] = stop;
    v
}

/// The OKS thresholds 0.5, 0.55, …, 0.95, as pycocotools computes them.
#[must_use]
pub fn oks_thresholds() -> [f64; T] {
    linspace(0.5, 0.95)
}

/// The recall points 0, 0.01, …, 1, as pycocotools computes them.
#[must_use]
pub fn recall_thresholds() -> [f64; R] {
    linspace(0.0, 1.0)
}

#[derive(Deserialize)]
struct GtFile {
    images: Vec<GtImage>,
    annotations: Vec<GtAnnotation>,
    #[serde(default)]
    categories: Vec<GtCategory>,
}

#[derive(Deserialize)]
struct GtImage {
    id: u64,
}

#[derive(Deserialize)]
struct GtCategory {
    id: u64,
}

#[derive(Deserialize)]
struct GtAnnotation {
    id: u64,
    image_id: u64,
    category_id: u64,
    #[serde(default)]
    iscrowd: u64,
    area: f64,
    bbox: [f64; 4],
    #[serde(default)]
    keypoints: Vec<f64>,
    num_keypoints: Option<u64>,
}

/// One annotated person, as the evaluation uses it.
struct Person {
    id: u64,
    crowd: bool,
    /// Crowd, or no labelled keypoints.
    ignore: bool,
    area: f64,
    bbox: [f64; 4],
    keypoints: [[f64; 3]; JOINTS],
}

/// A COCO keypoint annotation file, read for evaluation: the images, categories and
/// annotated people that pycocotools evaluates.
pub struct GroundTruth {
    /// Image ids, ascending, each once.
    images: Vec<u64>,
    /// Category ids, ascending, each once.
    categories: Vec<u64>,
    /// People by (image, category), in the file's order.
    people: HashMap<(u64, u64), Vec<Person>>,
}

impl GroundTruth {
    /// Reads a COCO keypoint annotation file (`person_keypoints_val2017.json`).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_file(read_json(path, ANNOTATION_FILE)?, path)
    }

    /// [`GroundTruth::load`] on the file's text (`path` only names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        Self::from_file(parse_json(text, path, ANNOTATION_FILE)?, path)
    }

    fn from_file(file: GtFile, path: &Path) -> Result<Self> {
        let images: BTreeSet<u64> = file.images.iter().map(|i| i.id).collect();
        let categories: BTreeSet<u64> = file.categories.iter().map(|c| c.id).collect();
        if categories.is_empty() {
            return Err(Error::Input(format!(
                "{}: the annotation file lists no categories, so nothing can be evaluated",
                path.display()
            )));
        }
        let mut people: HashMap<(u64, u64), Vec<Person>> = HashMap::new();
        for a in file.annotations {
            if !images.contains(&a.image_id) || !categories.contains(&a.category_id) {
                continue; // pycocotools evaluates only the listed images and categories
            }
            let bad = |why: &str| {
                Error::Input(format!(
                    "{}: annotation {} (image {}) {why}",
                    path.display(),
                    a.id,
                    a.image_id
                ))
            };
            let Some(labelled) = a.num_keypoints else {
                return Err(bad("has no num_keypoints"));
            };
            let keypoints = triples(&a.keypoints).ok_or_else(|| {
                bad(&format!(
                    "has {} keypoint values, not {}",
                    a.keypoints.len(),
                    3 * JOINTS
                ))
            })?;
            let crowd = a.iscrowd != 0;
            people
                .entry((a.image_id, a.category_id))
                .or_default()
                .push(Person {
                    id: a.id,
                    crowd,
                    ignore: crowd || labelled == 0,
                    area: a.area,
                    bbox: a.bbox,
                    keypoints,
                });
        }
        Ok(GroundTruth {
            images: images.into_iter().collect(),
            categories: categories.into_iter().collect(),
            people,
        })
    }

    /// The images evaluated (every image of the file, even those without people).
    #[must_use]
    pub fn images(&self) -> &[u64] {
        &self.images
    }
}

const ANNOTATION_FILE: &str =
    "COCO keypoint annotation file ({\"images\", \"annotations\", \"categories\"})";

/// 51 numbers as 17 `[x, y, v]`.
fn triples(v: &[f64]) -> Option<[[f64; 3]; JOINTS]> {
    if v.len() != 3 * JOINTS {
        return None;
    }
    let mut t = [[0.0; 3]; JOINTS];
    for (k, c) in t.iter_mut().zip(v.chunks_exact(3)) {
        k.copy_from_slice(c);
    }
    Some(t)
}

/// One person in a results file, its numbers in float64 as the file gives them (what
/// pycocotools reads; [`CocoResult`] holds the float32 keypoints of the pipeline).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct KeypointResult {
    /// The image's id.
    pub image_id: u64,
    /// The category (1, person).
    pub category_id: u64,
    /// `[x, y, score]` per joint, flattened.
    pub keypoints: Vec<f64>,
    /// The person's score.
    pub score: f64,
}

impl From<&CocoResult> for KeypointResult {
    fn from(r: &CocoResult) -> Self {
        KeypointResult {
            image_id: r.image_id,
            category_id: r.category_id,
            keypoints: r.keypoints.iter().map(|&v| f64::from(v)).collect(),
            score: r.score,
        }
    }
}

/// Reads a COCO keypoint results file (what `hrnet pose` or the official code writes).
pub fn load_keypoint_results(path: impl AsRef<Path>) -> Result<Vec<KeypointResult>> {
    read_json(path.as_ref(), RESULTS_FILE)
}

/// [`load_keypoint_results`] on the file's text (`path` only names it in errors).
pub fn parse_keypoint_results(text: &str, path: &Path) -> Result<Vec<KeypointResult>> {
    parse_json(text, path, RESULTS_FILE)
}

const RESULTS_FILE: &str =
    "COCO keypoint results file ([{\"image_id\", \"category_id\", \"keypoints\", \"score\"}])";

/// A result ready for matching.
struct Scored {
    score: f64,
    area: f64,
    xy: [[f64; 2]; JOINTS],
}

/// One image's matching for one category and area range (pycocotools' `evaluateImg`),
/// results best first.
struct ImageMatches {
    scores: Vec<f64>,
    /// Per threshold, per result: the matched person's id (0: none, as pycocotools reads it).
    matched: Vec<Vec<u64>>,
    /// Per threshold, per result: left out of the counts.
    ignored: Vec<Vec<bool>>,
    /// People that count.
    counted: usize,
}

/// The evaluation's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct KeypointEvaluation {
    /// AP, AP at OKS 0.5 and 0.75, AP for medium and large people, then the same for AR
    /// (named by [`STAT_NAMES`]); -1 where nothing could be measured, as pycocotools gives.
    pub stats: [f64; 10],
    /// Interpolated precision by (threshold, recall point, category, area range), -1
    /// where there is no person to find.
    precision: Vec<f64>,
    /// Recall by (threshold, category, area range), -1 likewise.
    recall: Vec<f64>,
    /// The categories, ascending.
    pub categories: Vec<u64>,
}

impl KeypointEvaluation {
    /// Interpolated precision at OKS threshold `t` (of [`oks_thresholds`]), recall point `r`
    /// (of [`recall_thresholds`]), the `k`-th category and area range `a` (all, medium,
    /// large).
    #[must_use]
    pub fn precision(&self, t: usize, r: usize, k: usize, a: usize) -> f64 {
        self.precision[((t * R + r) * self.categories.len() + k) * A + a]
    }

    /// Recall at OKS threshold `t`, the `k`-th category and area range `a`.
    #[must_use]
    pub fn recall(&self, t: usize, k: usize, a: usize) -> f64 {
        self.recall[(t * self.categories.len() + k) * A + a]
    }

    /// The figures as pycocotools' `summarize` prints them, a line each.
    #[must_use]
    pub fn summary(&self) -> Vec<String> {
        (0..10)
            .map(|i| {
                let (title, kind) = if i < 5 {
                    ("Average Precision", "(AP)")
                } else {
                    ("Average Recall", "(AR)")
                };
                let oks = ["0.50:0.95", "0.50", "0.75", "0.50:0.95", "0.50:0.95"][i % 5];
                let area = ["all", "all", "all", "medium", "large"][i % 5];
                format!(
                    " {title:<18} {kind} @[ IoU={oks:<9} | area={area:>6} | maxDets={MAX_RESULTS_PER_IMAGE:>3} ] = {:.3}",
                    self.stats[i]
                )
            })
            .collect()
    }
}

/// pycocotools' `computeOks` for one person and one result.
fn oks(g: &Person, d: &Scored, vars: &[f64; JOINTS]) -> f64 {
    let labelled = g.keypoints.iter().any(|k| k[2] > 0.0);
    let [bx, by, bw, bh] = g.bbox;
    let (x0, x1, y0, y1) = (bx - bw, bx + bw * 2.0, by - bh, by + bh * 2.0);
    let mut terms = Vec::with_capacity(JOINTS);
    for ((gk, dk), var) in g.keypoints.iter().zip(&d.xy).zip(vars) {
        if labelled && gk[2] <= 0.0 {
            continue;
        }
        let (dx, dy) = if labelled {
            (dk[0] - gk[0], dk[1] - gk[1])
        } else {
            (
                0f64.max(x0 - dk[0]) + 0f64.max(dk[0] - x1),
                0f64.max(y0 - dk[1]) + 0f64.max(dk[1] - y1),
            )
        };
        let e = (dx * dx + dy * dy) / var / (g.area + f64::EPSILON) / 2.0;
        terms.push((-e).exp());
    }
    numpy::sum(&terms) / terms.len() as f64
}

/// Stable sort of indices by descending score (`np.argsort(-scores, kind="mergesort")`).
fn best_first(scores: impl Fn(usize) -> f64, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        scores(b)
            .partial_cmp(&scores(a))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    order
}

/// pycocotools' `evaluateImg`: `people` in the file's order, `results` best first (at most
/// [`MAX_RESULTS_PER_IMAGE`]), `ious[d][g]` their OKS.
fn match_image(
    people: &[Person],
    results: &[&Scored],
    ious: &[Vec<f64>],
    (lo, hi): (f64, f64),
    thresholds: &[f64; T],
) -> Option<ImageMatches> {
    if people.is_empty() && results.is_empty() {
        return None;
    }
    let outside = |area: f64| area < lo || area > hi;
    let ignore: Vec<bool> = people.iter().map(|g| g.ignore || outside(g.area)).collect();
    // Counted people first, each group in the file's order.
    let mut order: Vec<usize> = (0..people.len()).collect();
    order.sort_by_key(|&g| ignore[g]);
    let mut matched = vec![vec![0u64; results.len()]; T];
    let mut ignored = vec![vec![false; results.len()]; T];
    for (t, &threshold) in thresholds.iter().enumerate() {
        let mut taken = vec![false; people.len()];
        for (d, row) in ious.iter().enumerate() {
            let mut best = threshold.min(1.0 - 1e-10);
            let mut m: Option<usize> = None;
            for (slot, &g) in order.iter().enumerate() {
                if taken[slot] && !people[g].crowd {
                    continue;
                }
                if m.is_some_and(|m| !ignore[order[m]]) && ignore[g] {
                    break;
                }
                if row[g] < best {
                    continue;
                }
                best = row[g];
                m = Some(slot);
            }
            if let Some(slot) = m {
                let g = order[slot];
                ignored[t][d] = ignore[g];
                matched[t][d] = people[g].id;
                taken[slot] = true;
            }
        }
        for (d, r) in results.iter().enumerate() {
            ignored[t][d] |= matched[t][d] == 0 && outside(r.area);
        }
    }
    Some(ImageMatches {
        scores: results.iter().map(|r| r.score).collect(),
        matched,
        ignored,
        counted: ignore.iter().filter(|&&i| !i).count(),
    })
}

/// pycocotools' `accumulate` for one category and area range: interpolated precision at
/// each recall point and the recall, per threshold; None when no person counts.
fn accumulate(images: &[&ImageMatches], points: &[f64; R]) -> Option<Vec<([f64; R], f64)>> {
    let counted: usize = images.iter().map(|m| m.counted).sum();
    if images.is_empty() || counted == 0 {
        return None;
    }
    let all: Vec<(usize, usize)> = images
        .iter()
        .enumerate()
        .flat_map(|(i, m)| (0..m.scores.len()).map(move |d| (i, d)))
        .collect();
    let order = best_first(|n| images[all[n].0].scores[all[n].1], all.len());
    let per_threshold = (0..T)
        .map(|t| {
            let (mut tp, mut fp) = (0.0f64, 0.0f64);
            let mut rc = Vec::with_capacity(order.len());
            let mut pr = Vec::with_capacity(order.len());
            for &n in &order {
                let (i, d) = all[n];
                let m = images[i];
                if !m.ignored[t][d] {
                    if m.matched[t][d] != 0 {
                        tp += 1.0;
                    } else {
                        fp += 1.0;
                    }
                }
                rc.push(tp / counted as f64);
                pr.push(tp / (fp + tp + f64::EPSILON));
            }
            for i in (1..pr.len()).rev() {
                if pr[i] > pr[i - 1] {
                    pr[i - 1] = pr[i];
                }
            }
            let mut q = [0.0; R];
            for (qi, &point) in q.iter_mut().zip(points) {
                // np.searchsorted(rc, point, side="left"); past the end the rest stay 0.
                let at = rc.partition_point(|&x| x < point);
                let Some(&p) = pr.get(at) else { break };
                *qi = p;
            }
            (q, rc.last().copied().unwrap_or(0.0))
        })
        .collect();
    Some(per_threshold)
}

/// Evaluates keypoint results against a ground truth, as pycocotools does.
///
/// Every result must be for an image of the ground truth (pycocotools refuses others too)
/// and hold COCO's 17 joints; results of a category the file does not list are not
/// counted.
pub fn evaluate_keypoints(
    gt: &GroundTruth,
    results: &[KeypointResult],
) -> Result<KeypointEvaluation> {
    let mut scored: HashMap<(u64, u64), Vec<Scored>> = HashMap::new();
    for (n, r) in results.iter().enumerate() {
        let bad = |why: String| Error::Input(format!("result {n} (image {}) {why}", r.image_id));
        if gt.images.binary_search(&r.image_id).is_err() {
            return Err(bad(
                "is for an image the annotation file does not list".into()
            ));
        }
        let k = triples(&r.keypoints).ok_or_else(|| {
            bad(format!(
                "has {} keypoint values, not {}",
                r.keypoints.len(),
                3 * JOINTS
            ))
        })?;
        if !r.score.is_finite() || r.keypoints.iter().any(|v| !v.is_finite()) {
            return Err(bad(
                "has a score or keypoint that is not a finite number".into()
            ));
        }
        if !gt.categories.contains(&r.category_id) {
            continue;
        }
        let (xs, ys) = (k.map(|p| p[0]), k.map(|p| p[1]));
        let span = |v: [f64; JOINTS]| {
            v.iter().copied().fold(f64::INFINITY, f64::min)
                ..=v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        };
        let (sx, sy) = (span(xs), span(ys));
        scored
            .entry((r.image_id, r.category_id))
            .or_default()
            .push(Scored {
                score: r.score,
                area: (sx.end() - sx.start()) * (sy.end() - sy.start()),
                xy: k.map(|p| [p[0], p[1]]),
            });
    }
    let vars = coco_variances();
    let thresholds = oks_thresholds();
    let points = recall_thresholds();
    let nk = gt.categories.len();
    let mut precision = vec![-1.0; T * R * nk * A];
    let mut recall = vec![-1.0; T * nk * A];
    for (k, &category) in gt.categories.iter().enumerate() {
        // by_area[a][i]: image i's matches in area range a.
        let mut by_area: Vec<Vec<ImageMatches>> = (0..A).map(|_| Vec::new()).collect();
        for &image in &gt.images {
            let people = gt
                .people
                .get(&(image, category))
                .map_or(&[][..], Vec::as_slice);
            let candidates = scored
                .get(&(image, category))
                .map_or(&[][..], Vec::as_slice);
            let mut best: Vec<&Scored> = best_first(|d| candidates[d].score, candidates.len())
                .into_iter()
                .map(|d| &candidates[d])
                .collect();
            best.truncate(MAX_RESULTS_PER_IMAGE);
            let ious: Vec<Vec<f64>> = if people.is_empty() {
                vec![Vec::new(); best.len()]
            } else {
                best.iter()
                    .map(|d| people.iter().map(|g| oks(g, d, &vars)).collect())
                    .collect()
            };
            for (a, &range) in AREA_RANGES.iter().enumerate() {
                by_area[a].extend(match_image(people, &best, &ious, range, &thresholds));
            }
        }
        for (a, images) in by_area.iter().enumerate() {
            let refs: Vec<&ImageMatches> = images.iter().collect();
            let Some(per_threshold) = accumulate(&refs, &points) else {
                continue;
            };
            for (t, (q, rc)) in per_threshold.into_iter().enumerate() {
                for (r, p) in q.into_iter().enumerate() {
                    precision[((t * R + r) * nk + k) * A + a] = p;
                }
                recall[(t * nk + k) * A + a] = rc;
            }
        }
    }
    let mut e = KeypointEvaluation {
        stats: [0.0; 10],
        precision,
        recall,
        categories: gt.categories.clone(),
    };
    // (threshold index or all, area range) of each figure, for AP then AR.
    let figures: [(Option<usize>, usize); 5] =
        [(None, 0), (Some(0), 0), (Some(5), 0), (None, 1), (None, 2)];
    for (i, &(only, a)) in figures.iter().enumerate() {
        let ts: Vec<usize> = only.map_or_else(|| (0..T).collect(), |t| vec![t]);
        let mut ap = Vec::new();
        let mut ar = Vec::new();
        for &t in &ts {
            for r in 0..R {
                for k in 0..nk {
                    ap.push(e.precision(t, r, k, a));
                }
            }
            for k in 0..nk {
                ar.push(e.recall(t, k, a));
            }
        }
        e.stats[i] = summarize(&ap);
        e.stats[i + 5] = summarize(&ar);
    }
    Ok(e)
}

/// pycocotools' `_summarize`: the mean of the measured values (not -1), or -1.
fn summarize(values: &[f64]) -> f64 {
    let measured: Vec<f64> = values.iter().copied().filter(|&v| v > -1.0).collect();
    if measured.is_empty() {
        -1.0
    } else {
        numpy::mean(&measured)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_numpy_linspace() {
        let t = oks_thresholds();
        assert_eq!((t[0], t[5], t[9]), (0.5, 0.75, 0.95));
        let r = recall_thresholds();
        assert_eq!((r[0], r[100]), (0.0, 1.0));
        assert_eq!(r[7], 7.0 * 0.01);
    }
}
