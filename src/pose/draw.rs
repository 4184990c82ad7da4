//! `--draw`: the image with each person's box, skeleton and joints, readable at a glance.
//! Boxes magenta, left limbs orange, right limbs blue, the rest green, joints ringed in
//! white; only keypoints scoring above
//! [`VISIBLE`] are drawn.

use image::{Rgb, RgbImage};

use super::joints::JointSet;
use super::{Pose, VISIBLE};

const LEFT: Rgb<u8> = Rgb([255, 140, 0]);
const RIGHT: Rgb<u8> = Rgb([30, 144, 255]);
const MIDDLE: Rgb<u8> = Rgb([50, 205, 50]);
const BOX: Rgb<u8> = Rgb([230, 0, 230]);
const RING: Rgb<u8> = Rgb([255, 255, 255]);

fn side(joints: &JointSet, j: usize) -> Rgb<u8> {
    match joints.names.get(j) {
        Some(n) if n.starts_with("left") => LEFT,
        Some(n) if n.starts_with("right") => RIGHT,
        _ => MIDDLE,
    }
}

/// Sets every pixel within `radius` of the segment `a`–`b`.
fn segment(img: &mut RgbImage, a: (f32, f32), b: (f32, f32), radius: f32, color: Rgb<u8>) {
    let (w, h) = (img.width() as f32, img.height() as f32);
    let x0 = (a.0.min(b.0) - radius).floor().clamp(0.0, w) as u32;
    let x1 = (a.0.max(b.0) + radius).ceil().clamp(0.0, w) as u32;
    let y0 = (a.1.min(b.1) - radius).floor().clamp(0.0, h) as u32;
    let y1 = (a.1.max(b.1) + radius).ceil().clamp(0.0, h) as u32;
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    for y in y0..y1 {
        for x in x0..x1 {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let t = if len2 > 0.0 {
                (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let (cx, cy) = (a.0 + t * dx - px, a.1 + t * dy - py);
            if cx * cx + cy * cy <= radius * radius {
                img.put_pixel(x, y, color);
            }
        }
    }
}

/// A copy of `image` with every pose drawn over it.
#[must_use]
pub fn draw_poses(image: &RgbImage, poses: &[Pose], joints: &JointSet) -> RgbImage {
    let mut img = image.clone();
    let line = (img.width().max(img.height()) as f32 / 250.0).max(1.5);
    for p in poses {
        let b = &p.bbox;
        let (x0, y0, x1, y1) = (
            b.x as f32,
            b.y as f32,
            (b.x + b.w) as f32,
            (b.y + b.h) as f32,
        );
        for (a, c) in [
            ((x0, y0), (x1, y0)),
            ((x1, y0), (x1, y1)),
            ((x1, y1), (x0, y1)),
            ((x0, y1), (x0, y0)),
        ] {
            segment(&mut img, a, c, line * 0.5, BOX);
        }
        let visible = |j: usize| {
            p.keypoints
                .get(j)
                .filter(|k| k.score > VISIBLE)
                .map(|k| (k.x, k.y))
        };
        for &(a, c) in joints.skeleton {
            if let (Some(pa), Some(pc)) = (visible(a), visible(c)) {
                let (sa, sc) = (side(joints, a), side(joints, c));
                segment(&mut img, pa, pc, line, if sa == sc { sa } else { MIDDLE });
            }
        }
        for j in 0..p.keypoints.len() {
            if let Some(pt) = visible(j) {
                segment(&mut img, pt, pt, line * 1.8, RING);
                segment(&mut img, pt, pt, line * 1.2, side(joints, j));
            }
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pose::{Keypoint, PersonBox, affine::Crop, joints::COCO};

    #[test]
    fn limbs_joints_and_boxes_are_drawn_where_they_are() {
        let img = RgbImage::new(100, 100);
        let mut kp = vec![
            Keypoint {
                x: 0.0,
                y: 0.0,
                score: 0.0
            };
            17
        ];
        kp[5] = Keypoint {
            x: 20.0,
            y: 50.0,
            score: 0.9,
        }; // left shoulder
        kp[7] = Keypoint {
            x: 60.0,
            y: 50.0,
            score: 0.9,
        }; // left elbow
        let pose = Pose {
            keypoints: kp,
            bbox: PersonBox::new(10.0, 10.0, 80.0, 80.0, 1.0),
            crop: Crop::F32 {
                center: [50.0, 50.0],
                scale: [0.5, 0.5],
            },
            score: 1.0,
        };
        let out = draw_poses(&img, &[pose], &COCO);
        assert_eq!(*out.get_pixel(40, 50), LEFT, "the limb between the two");
        assert_eq!(*out.get_pixel(20, 50), LEFT, "the joint");
        assert_eq!(*out.get_pixel(50, 10), BOX, "the box's top edge");
        assert_eq!(*out.get_pixel(5, 5), Rgb([0, 0, 0]), "nothing elsewhere");
        assert_eq!(
            *out.get_pixel(50, 80),
            Rgb([0, 0, 0]),
            "invisible joints are not drawn"
        );
    }
}
