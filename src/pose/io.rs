//! Files around the pipeline: images, person boxes, COCO detections and image lists, and
//! results in the COCO keypoint results format.

use std::cmp::Ordering::Less;
use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::{PersonBox, Pose};
use crate::error::{Error, Result};

/// Decodes an image file to RGB, as `cv2.imread(IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION)`
/// then `BGR2RGB` does, to the byte (`tests/image_decode.rs`): JPEGs with libjpeg-turbo's
/// decoder (through mozjpeg, the same integer IDCT and upsampling as OpenCV's), CMYK
/// JPEGs converted as OpenCV converts them, other formats with the `image` crate, 16-bit
/// samples cut to their high byte as OpenCV's PNG and PNM readers do; grey is replicated
/// to RGB, alpha dropped and EXIF orientation ignored. Formats: JPEG, PNG, BMP (not 16
/// bits a pixel), WebP and PNM, each checked against OpenCV's decode
/// (`tests/image_decode.rs`); others (TIFF, GIF, ...) give an error.
pub fn load_image(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_image(&bytes, path)
}

/// [`load_image`] on a file's bytes (`path` only names it in errors). The size an image's
/// header claims is checked against OpenCV's limits and against what its bytes can hold
/// before anything is decoded, so a small file cannot make it allocate much.
pub fn decode_image(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    let bad = |reason: String| Error::Image {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return decode_jpeg(bytes).map_err(bad);
    }
    palette_whole(bytes).map_err(bad)?;
    bmp_not_16_bit(bytes).map_err(bad)?;
    let unreadable = |e: image::ImageError| bad(format!("not a readable image ({e})"));
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| unreadable(e.into()))?;
    let format = reader.format();
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE as u32);
    limits.max_image_height = Some(MAX_SIDE as u32);
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(unreadable)?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    // WebP's coders can spend less than a bit on a pixel, so a real WebP can be smaller
    // than that bound allows: up to WEBP_ANY_SIZE pixels it is decoded whatever its size.
    let (w, h) = (w as usize, h as usize);
    if format != Some(image::ImageFormat::WebP) || w.saturating_mul(h) > WEBP_ANY_SIZE {
        size_fits(w, h, bytes.len(), PNG_PIXELS_PER_BYTE).map_err(bad)?;
    }
    // A decoder that panics on some other malformed file (as png 0.18.1 did on palettes)
    // gives an error here rather than taking the caller's process down.
    let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
        image::DynamicImage::from_decoder(decoder)
    }))
    .map_err(|_| bad("not a readable image (the decoder gave up)".into()))?;
    Ok(rgb8(decoded.map_err(unreadable)?))
}

/// Refuses a PNG whose palette (PLTE chunk) is not whole RGB triples, which the PNG
/// specification forbids and on which the `png` crate (0.18.1) panics (image-rs/image-png
/// issue 694); other files pass unread.
fn palette_whole(bytes: &[u8]) -> std::result::Result<(), String> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    let Some(mut rest) = bytes.strip_prefix(SIGNATURE) else {
        return Ok(());
    };
    // Each chunk: length (4 bytes, big-endian), type (4), data, CRC (4).
    while let Some((head, tail)) = rest.split_first_chunk::<8>() {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        match &head[4..] {
            b"PLTE" if !len.is_multiple_of(3) => {
                return Err(format!(
                    "not a readable image (its palette has {len} bytes, not whole RGB triples)"
                ));
            }
            b"IEND" => break,
            _ => {}
        }
        let Some(next) = tail.get(len.saturating_add(4)..) else {
            break;
        };
        rest = next;
    }
    Ok(())
}

/// Refuses a BMP of 16 bits a pixel: OpenCV widens its 5- and 6-bit channels by a shift
/// (`v << 3`), `image` by rounding, and the two disagree on nine values in ten; other
/// files pass unread.
fn bmp_not_16_bit(bytes: &[u8]) -> std::result::Result<(), String> {
    // The file header is 14 bytes; the bit count sits at offset 14 of the info header.
    match (bytes.get(..2), bytes.get(28..30)) {
        (Some(b"BM"), Some(&[16, 0])) => Err(
            "a 16-bit BMP, which is not read (OpenCV's conversion of its channels is not \
             reproduced here); convert it to PNG"
                .into(),
        ),
        _ => Ok(()),
    }
}

/// OpenCV's limits on an image it decodes (`CV_IO_MAX_IMAGE_WIDTH`, `_HEIGHT` and
/// `_PIXELS`): it refuses larger ones, so the official pipeline cannot read them either.
const MAX_SIDE: usize = 1 << 20;
const MAX_PIXELS: usize = 1 << 30;
/// The most pixels a complete JPEG holds per byte: it spends at least one bit on each 8×8
/// block of its most finely sampled component (a Huffman code is never shorter).
const JPEG_PIXELS_PER_BYTE: usize = 512;
/// The same for a PNG: a pixel is at least one bit of the compressed stream once inflated,
/// and deflate expands at most 1032 times.
const PNG_PIXELS_PER_BYTE: usize = 8 * 1032;

/// The largest WebP decoded whatever its size in bytes (a 2048 × 2048 picture, 12 MiB as
/// RGB); a larger one needs the bytes a PNG of its size would (500 for 4 megapixels, a
/// photograph's WebP holds a hundred times more).
const WEBP_ANY_SIZE: usize = 1 << 22;

/// Whether an image file of `bytes` bytes may be `w × h`, checked on its header before
/// anything is decoded or allocated. Beyond OpenCV's limits, no; nor beyond `per_byte`
/// pixels a byte: a header that claims more belongs to a cut or forged file, which the
/// decoder would fill at the size it claims (libjpeg fills with grey: a 2 KB JPEG that
/// claimed 60000 × 60000 took 21 GB and most of a minute).
fn size_fits(w: usize, h: usize, bytes: usize, per_byte: usize) -> std::result::Result<(), String> {
    let pixels = w.saturating_mul(h);
    if w > MAX_SIDE || h > MAX_SIDE || pixels > MAX_PIXELS {
        return Err(format!(
            "{w}×{h} pixels, beyond OpenCV's limits ({MAX_SIDE} a side, {MAX_PIXELS} in all)"
        ));
    }
    let most = bytes.saturating_mul(per_byte);
    if pixels > most {
        return Err(format!(
            "its header claims {w}×{h} pixels; {bytes} bytes hold at most {most}"
        ));
    }
    Ok(())
}

/// 8-bit RGB from any decoded image. 16-bit samples keep their high byte (libpng's
/// `png_set_strip_16`, which OpenCV's PNG reader asks for) where `image`'s own conversion
/// would round (`(v + 128) / 257`), which differs from it by one level for a quarter of
/// the values.
fn rgb8(img: image::DynamicImage) -> RgbImage {
    use image::ColorType::{L16, La16, Rgb16, Rgba16};
    if !matches!(img.color(), L16 | La16 | Rgb16 | Rgba16) {
        return img.into_rgb8();
    }
    let deep = img.into_rgb16();
    let (w, h) = deep.dimensions();
    let bytes = deep.into_raw().into_iter().map(|v| v.to_be_bytes()[0]);
    RgbImage::from_raw(w, h, bytes.collect()).expect("the same number of samples")
}

/// One CMYK pixel as libjpeg gives it (Adobe's inverted convention) to RGB, with OpenCV's
/// integer arithmetic (its JPEG reader's CMYK-to-BGR step): each of C, M, Y becomes
/// `k − ((255 − v)·k >> 8)`.
fn cmyk_to_rgb([c, m, y, k]: [u8; 4]) -> [u8; 3] {
    let k = u32::from(k);
    // (255 − v)·k < 2^16, so the shifted product is at most k and the result fits in u8.
    [c, m, y].map(|v| (k - (((255 - u32::from(v)) * k) >> 8)) as u8)
}

/// A JPEG's pixels as libjpeg-turbo decodes them (islow IDCT, fancy upsampling). A file
/// that stops before its end-of-image marker is refused rather than grey-filled.
fn decode_jpeg(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    let end = bytes
        .iter()
        .rposition(|&b| b != 0 && !b.is_ascii_whitespace())
        .unwrap_or(0);
    if end < 1 || bytes[end - 1..=end] != [0xFF, 0xD9] {
        return Err("truncated JPEG (no end-of-image marker)".into());
    }
    let decoded = std::panic::catch_unwind(|| -> std::io::Result<(usize, usize, Vec<[u8; 3]>)> {
        let d = mozjpeg::Decompress::new_mem(bytes)?;
        let (w, h) = d.size();
        size_fits(w, h, bytes.len(), JPEG_PIXELS_PER_BYTE).map_err(std::io::Error::other)?;
        // Four components are CMYK or YCCK: OpenCV has libjpeg give CMYK and converts it
        // itself; anything else libjpeg converts to RGB (grey replicated).
        if d.components().len() == 4 {
            let mut d = d.to_colorspace(mozjpeg::ColorSpace::JCS_CMYK)?;
            let px: Vec<[u8; 4]> = d.read_scanlines()?;
            d.finish()?;
            return Ok((w, h, px.into_iter().map(cmyk_to_rgb).collect()));
        }
        let mut d = d.rgb()?;
        let px: Vec<[u8; 3]> = d.read_scanlines()?;
        d.finish()?;
        Ok((w, h, px))
    });
    let (w, h, px) = match decoded {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Err(format!("not a readable JPEG ({e})")),
        Err(_) => return Err("not a readable JPEG (the decoder gave up)".into()),
    };
    let (wu, hu) = (
        u32::try_from(w).map_err(|_| "too wide")?,
        u32::try_from(h).map_err(|_| "too tall")?,
    );
    RgbImage::from_raw(wu, hu, px.into_iter().flatten().collect())
        .ok_or_else(|| "pixel count does not match its size".into())
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_json(&text, path, what)
}

pub(crate) fn parse_json<T: for<'de> Deserialize<'de>>(
    text: &str,
    path: &Path,
    what: &str,
) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        reason: format!("not a valid {what} ({e})"),
    })
}

/// One entry of a COCO detections file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Detection {
    /// The image's COCO id.
    pub image_id: u64,
    /// 1 for a person.
    pub category_id: u64,
    /// `[x, y, w, h]`.
    pub bbox: [f64; 4],
    /// Detection score.
    pub score: f64,
}

/// The COCO category id of a person.
pub const PERSON: u64 = 1;

/// The official evaluation's detection threshold (`TEST.IMAGE_THRE`, 0.0 in every official
/// experiment file): detections scoring below it are not run.
pub const OFFICIAL_MIN_DETECTION_SCORE: f64 = 0.0;

/// Person boxes of each image from a COCO detections file
/// (`[{"image_id", "category_id", "bbox", "score"}]`), other categories and detections
/// scoring below `min_score` left out, as the official loader does
/// ([`OFFICIAL_MIN_DETECTION_SCORE`] is its setting). Images come in the order their
/// first kept detection appears in the file and each image's boxes in file order, as the
/// official evaluation orders its results.
pub fn load_detections(
    path: impl AsRef<Path>,
    min_score: f64,
) -> Result<Vec<(u64, Vec<PersonBox>)>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_detections(&text, path, min_score)
}

/// [`load_detections`] on the file's text (`path` only names it in errors).
pub fn parse_detections(
    text: &str,
    path: &Path,
    min_score: f64,
) -> Result<Vec<(u64, Vec<PersonBox>)>> {
    let dets: Vec<Detection> = parse_json(text, path, "COCO detections file")?;
    let mut by_image: Vec<(u64, Vec<PersonBox>)> = Vec::new();
    let mut slot: HashMap<u64, usize> = HashMap::new();
    // `score < min_score` skips, as the official `if score < self.image_thre: continue`
    // (a NaN score is kept there too).
    for d in dets
        .into_iter()
        .filter(|d| d.category_id == PERSON && d.score.partial_cmp(&min_score) != Some(Less))
    {
        let [x, y, w, h] = d.bbox;
        let i = *slot.entry(d.image_id).or_insert_with(|| {
            by_image.push((d.image_id, Vec::new()));
            by_image.len() - 1
        });
        by_image[i].1.push(PersonBox::new(x, y, w, h, d.score));
    }
    Ok(by_image)
}

#[derive(Deserialize)]
struct Annotations {
    images: Vec<AnnotatedImage>,
    annotations: Vec<Annotation>,
}

#[derive(Deserialize)]
struct AnnotatedImage {
    id: u64,
    width: f64,
    height: f64,
}

#[derive(Deserialize)]
struct Annotation {
    image_id: u64,
    category_id: u64,
    bbox: [f64; 4],
    area: f64,
    #[serde(default)]
    iscrowd: u64,
    #[serde(default)]
    keypoints: Vec<f64>,
}

/// Ground-truth person boxes from a COCO keypoint annotation file, as the official
/// evaluation takes them with `TEST.USE_GT_BBOX` (`_load_coco_keypoint_annotation_kernal`
/// of `lib/dataset/coco.py`): images in the file's order; each image's non-crowd person
/// annotations with a positive area and at least one labelled keypoint, in file order;
/// each box cleaned as there (`clean_bbox`: clipped to the image, width and height one
/// pixel less) and scored 1.
pub fn load_ground_truth(path: impl AsRef<Path>) -> Result<Vec<(u64, Vec<PersonBox>)>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_ground_truth(&text, path)
}

/// [`load_ground_truth`] on the file's text (`path` only names it in errors).
pub fn parse_ground_truth(text: &str, path: &Path) -> Result<Vec<(u64, Vec<PersonBox>)>> {
    let file: Annotations = parse_json(
        text,
        path,
        "COCO annotation file ({\"images\": [{\"id\", \"width\", \"height\"}], \"annotations\": [...]})",
    )?;
    let mut by_image: Vec<(u64, Vec<PersonBox>)> =
        file.images.iter().map(|i| (i.id, Vec::new())).collect();
    let slot: HashMap<u64, usize> = file
        .images
        .iter()
        .enumerate()
        .map(|(n, i)| (i.id, n))
        .collect();
    for a in &file.annotations {
        let Some(&n) = slot.get(&a.image_id) else {
            continue; // pycocotools lists no annotation of an image the file lacks
        };
        let image = &file.images[n];
        let [x, y, w, h] = a.bbox;
        let x1 = x.max(0.0);
        let y1 = y.max(0.0);
        let x2 = (image.width - 1.0).min(x1 + (w - 1.0).max(0.0));
        let y2 = (image.height - 1.0).min(y1 + (h - 1.0).max(0.0));
        // `max(obj['keypoints']) == 0` drops it there (an empty list would raise).
        let labelled = a
            .keypoints
            .iter()
            .copied()
            .reduce(f64::max)
            .is_some_and(|m| m != 0.0);
        if a.iscrowd == 0
            && a.area > 0.0
            && x2 >= x1
            && y2 >= y1
            && a.category_id == PERSON
            && labelled
        {
            by_image[n]
                .1
                .push(PersonBox::new(x1, y1, x2 - x1, y2 - y1, 1.0));
        }
    }
    Ok(by_image)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum BoxEntry {
    Plain([f64; 4]),
    Scored { bbox: [f64; 4], score: Option<f64> },
}

/// Boxes for one image: a JSON list of `[x, y, w, h]` or of `{"bbox": [x, y, w, h],
/// "score": s}` (score 1 when absent).
pub fn load_boxes(path: impl AsRef<Path>) -> Result<Vec<PersonBox>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_boxes(&text, path)
}

/// [`load_boxes`] on the file's text (`path` only names it in errors).
pub fn parse_boxes(text: &str, path: &Path) -> Result<Vec<PersonBox>> {
    let entries: Vec<BoxEntry> = parse_json(text, path, "boxes file ([[x, y, w, h], ...])")?;
    Ok(entries
        .into_iter()
        .map(|e| {
            let (b, s) = match e {
                BoxEntry::Plain(b) => (b, 1.0),
                BoxEntry::Scored { bbox, score } => (bbox, score.unwrap_or(1.0)),
            };
            PersonBox::new(b[0], b[1], b[2], b[3], s)
        })
        .collect())
}

/// Parses `x,y,w,h` (the CLI's `--bbox`).
pub fn parse_bbox(s: &str) -> Result<PersonBox> {
    let v: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| Error::Input(format!("'{s}' is not a box x,y,w,h")))?;
    match v[..] {
        [x, y, w, h] => Ok(PersonBox::new(x, y, w, h, 1.0)),
        _ => Err(Error::Input(format!(
            "'{s}' is not a box x,y,w,h (four numbers)"
        ))),
    }
}

#[derive(Deserialize)]
struct ImageList {
    images: Vec<ImageEntry>,
}

#[derive(Deserialize)]
struct ImageEntry {
    id: u64,
    file_name: String,
}

/// Image file names by id from a COCO-style file with an `images` list
/// (`{"images": [{"id", "file_name"}, ...]}`, as annotation files have).
pub fn load_image_list(path: impl AsRef<Path>) -> Result<BTreeMap<u64, String>> {
    let list: ImageList = read_json(
        path.as_ref(),
        "image list ({\"images\": [{\"id\", \"file_name\"}]})",
    )?;
    Ok(list
        .images
        .into_iter()
        .map(|e| (e.id, e.file_name))
        .collect())
}

/// The extensions tried for COCO-named images.
const EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "JPG", "JPEG", "PNG"];

/// The file of image `id` in `dir`: from `list` when given, else COCO's naming (the id
/// zero-padded to 12 digits, any common extension).
pub fn find_image(dir: &Path, id: u64, list: Option<&BTreeMap<u64, String>>) -> Result<PathBuf> {
    if let Some(list) = list {
        let name = list
            .get(&id)
            .ok_or_else(|| Error::Input(format!("image {id} is not in the image list")))?;
        return Ok(dir.join(name));
    }
    EXTENSIONS
        .iter()
        .map(|ext| dir.join(format!("{id:012}.{ext}")))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Input(format!(
                "no image {id:012}.jpg (or .jpeg, .png) in {}",
                dir.display()
            ))
        })
}

/// One person in the COCO keypoint results format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CocoResult {
    /// The image's id.
    pub image_id: u64,
    /// Always 1 (person).
    pub category_id: u64,
    /// `[x, y, score]` per joint, flattened.
    pub keypoints: Vec<f32>,
    /// The person's score.
    pub score: f64,
    /// The crop's center, as the official results file gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub center: Option<[f32; 2]>,
    /// The crop's scale, as the official results file gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<[f32; 2]>,
}

impl CocoResult {
    /// A pose of image `image_id`.
    #[must_use]
    pub fn new(image_id: u64, pose: &Pose) -> Self {
        CocoResult {
            image_id,
            category_id: PERSON,
            keypoints: pose.flat_keypoints(),
            score: pose.score,
            center: Some(pose.crop.center().map(|v| v as f32)),
            scale: Some(pose.crop.scale().map(|v| v as f32)),
        }
    }
}

/// Writes results as a JSON array ([`CocoResult`]s, or
/// [`MpiiResult`](super::mpii::MpiiResult)s).
pub fn write_results<R: Serialize>(path: impl AsRef<Path>, results: &[R]) -> Result<()> {
    let path = path.as_ref();
    let text = serde_json::to_string(results).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Reads results written by [`write_results`] (or by the official code).
pub fn load_results(path: impl AsRef<Path>) -> Result<Vec<CocoResult>> {
    read_json(path.as_ref(), "COCO keypoint results file")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hrnet-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn boxes_files_in_both_forms() {
        let p = temp(
            "boxes.json",
            r#"[[1, 2, 3, 4], {"bbox": [5, 6, 7, 8], "score": 0.5}, {"bbox": [0, 0, 1, 1]}]"#,
        );
        let b = load_boxes(&p).unwrap();
        assert_eq!(b[0], PersonBox::new(1.0, 2.0, 3.0, 4.0, 1.0));
        assert_eq!(b[1], PersonBox::new(5.0, 6.0, 7.0, 8.0, 0.5));
        assert_eq!(b[2].score, 1.0);
        let bad = temp("bad.json", r#"[[1, 2, 3]]"#);
        let e = load_boxes(&bad).unwrap_err().to_string();
        assert!(
            e.contains("bad.json") && e.contains("not a valid boxes file"),
            "{e}"
        );
        assert_eq!(
            parse_bbox("1, 2,3,4.5").unwrap(),
            PersonBox::new(1.0, 2.0, 3.0, 4.5, 1.0)
        );
        assert!(parse_bbox("1,2,3").is_err() && parse_bbox("a,b,c,d").is_err());
    }

    #[test]
    fn ground_truth_boxes_are_cleaned_as_the_official_loader_cleans_them() {
        let p = temp(
            "ann.json",
            r#"{"images": [{"id": 9, "width": 100, "height": 80, "file_name": "a.jpg"},
                           {"id": 4, "width": 50, "height": 50, "file_name": "b.jpg"}],
                "annotations": [
                {"image_id": 4, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0, "keypoints": [1, 1, 2]},
                {"image_id": 9, "category_id": 1, "bbox": [-5, 60, 200.5, 30], "area": 10, "iscrowd": 0, "keypoints": [0, 0, 0, 5, 5, 1]},
                {"image_id": 9, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 10, "iscrowd": 1, "keypoints": [1, 1, 2]},
                {"image_id": 9, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 10, "iscrowd": 0, "keypoints": [0, 0, 0]},
                {"image_id": 9, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 0, "iscrowd": 0, "keypoints": [1, 1, 2]},
                {"image_id": 9, "category_id": 2, "bbox": [1, 1, 5, 5], "area": 10, "iscrowd": 0, "keypoints": [1, 1, 2]},
                {"image_id": 9, "category_id": 1, "bbox": [120, 1, 5, 5], "area": 10, "iscrowd": 0, "keypoints": [1, 1, 2]},
                {"image_id": 7, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 10, "iscrowd": 0, "keypoints": [1, 1, 2]}]}"#,
        );
        let gt = load_ground_truth(&p).unwrap();
        let ids: Vec<u64> = gt.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [9, 4], "the file's image order");
        // Image 9 keeps only the box clipped to x 0..99, y 60..79; crowds, people without
        // keypoints or area, other categories and boxes outside the image are dropped.
        assert_eq!(gt[0].1, [PersonBox::new(0.0, 60.0, 99.0, 19.0, 1.0)]);
        // Width and height one pixel less, as `clean_bbox`.
        assert_eq!(gt[1].1, [PersonBox::new(10.0, 10.0, 19.0, 19.0, 1.0)]);
        assert!(load_ground_truth(temp("bad.json", r#"{"images": []}"#)).is_err());
    }

    #[test]
    fn detections_keep_people_only() {
        let p = temp(
            "det.json",
            r#"[{"image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.9},
                {"image_id": 7, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.9},
                {"image_id": 8, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.1},
                {"image_id": 3, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.3},
                {"image_id": 7, "category_id": 1, "bbox": [2, 2, 3, 4], "score": 0.8}]"#,
        );
        let d = load_detections(&p, OFFICIAL_MIN_DETECTION_SCORE).unwrap();
        let order: Vec<(u64, usize)> = d.iter().map(|(id, b)| (*id, b.len())).collect();
        assert_eq!(
            order,
            [(7, 2), (8, 1), (3, 1)],
            "first appearance, people only"
        );
        assert_eq!((d[1].1[0].score, d[0].1[1].score), (0.1, 0.8));
        assert!(load_detections(temp("junk.json", "{"), 0.0).is_err());
    }

    #[test]
    fn image_sizes_are_checked_against_opencvs_limits_and_the_files_length() {
        let jpeg = |w, h, bytes| size_fits(w, h, bytes, JPEG_PIXELS_PER_BYTE);
        assert!(jpeg(640, 425, 60_000).is_ok());
        // A uniform grey JPEG spends two bits on each 8×8 block: 256 pixels a byte (PIL,
        // 4000 × 3000 in 47,033 bytes); a uniform 1-bit PNG 8,116 (8000 × 6000 in 5,914).
        assert!(jpeg(4000, 3000, 47_033).is_ok());
        assert!(size_fits(8000, 6000, 5_914, PNG_PIXELS_PER_BYTE).is_ok());
        assert!(jpeg(4000, 3000, 12_000_000_usize.div_ceil(512)).is_ok());
        let e = jpeg(4000, 3000, 12_000_000_usize.div_ceil(512) - 1).unwrap_err();
        assert!(e.contains("claims 4000×3000"), "{e}");
        for (w, h) in [(MAX_SIDE + 1, 1), (1, MAX_SIDE + 1), (32_768, 32_769)] {
            let e = jpeg(w, h, usize::MAX).unwrap_err();
            assert!(e.contains("beyond OpenCV's limits"), "{e}");
        }
        assert!(jpeg(32_768, 32_768, usize::MAX).is_ok());
    }

    #[test]
    fn detections_below_the_threshold_are_skipped_before_grouping() {
        let text = r#"[{"image_id": 5, "category_id": 1, "bbox": [0, 0, 5, 5], "score": -0.5},
                {"image_id": 6, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.0},
                {"image_id": 5, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.4},
                {"image_id": 9, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.2}]"#;
        let order = |min: f64| -> Vec<(u64, Vec<f64>)> {
            parse_detections(text, Path::new("d.json"), min)
                .unwrap()
                .into_iter()
                .map(|(id, b)| (id, b.iter().map(|b| b.score).collect()))
                .collect()
        };
        // Image 5 is placed by its first kept detection, after image 6.
        assert_eq!(
            order(OFFICIAL_MIN_DETECTION_SCORE),
            [(6, vec![0.0]), (5, vec![0.4]), (9, vec![0.2])]
        );
        assert_eq!(order(0.3), [(5, vec![0.4])]);
        assert_eq!(order(f64::NEG_INFINITY).len(), 3);
        assert!(order(1.0).is_empty());
    }

    #[test]
    fn images_by_coco_name_or_list() {
        let dir = temp("000000000042.png", "").parent().unwrap().to_path_buf();
        assert_eq!(
            find_image(&dir, 42, None).unwrap(),
            dir.join("000000000042.png")
        );
        assert!(
            find_image(&dir, 43, None)
                .unwrap_err()
                .to_string()
                .contains("000000000043.jpg")
        );
        let list = BTreeMap::from([(5, "five.jpg".to_string())]);
        assert_eq!(
            find_image(&dir, 5, Some(&list)).unwrap(),
            dir.join("five.jpg")
        );
        assert!(find_image(&dir, 6, Some(&list)).is_err());
        let junk = temp("junk.jpg", "not a jpeg");
        assert!(matches!(load_image(&junk), Err(Error::Image { .. })));
        // A real JPEG, whole and cut short.
        let mut jpeg = Vec::new();
        image::RgbImage::from_pixel(16, 8, image::Rgb([200, 100, 50]))
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        let whole = dir.join("whole.jpg");
        std::fs::write(&whole, &jpeg).unwrap();
        let img = load_image(&whole).unwrap();
        assert_eq!(img.dimensions(), (16, 8));
        let px = img.get_pixel(3, 3).0;
        assert!(px[0].abs_diff(200) < 4 && px[2].abs_diff(50) < 4, "{px:?}");
        let cut = dir.join("cut.jpg");
        std::fs::write(&cut, &jpeg[..jpeg.len() / 2]).unwrap();
        let e = load_image(&cut).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        assert!(matches!(
            load_image(dir.join("absent.jpg")),
            Err(Error::Io { .. })
        ));
    }
}
