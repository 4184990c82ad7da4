//! Every row of docs/errors.md: a typed error from the library and, through `hrnet`, one
//! line on stderr with a failing exit; never a panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::scratch;
use hrnet::weights::{CheckpointTensor, random_checkpoint};
use hrnet::{Checkpoint, CpuEngine, Error, HrnetConfig, Model, Nchw, Tensor, image, npy};

/// A small network with every official module kind, at 64×64.
fn tiny() -> HrnetConfig {
    let mut c = HrnetConfig::official("tiny", 4, 17, 64, 64);
    c.stages[1].modules = 1;
    c.stages[2].modules = 1;
    c
}

struct Case {
    dir: PathBuf,
    weights: PathBuf,
    input: PathBuf,
}

fn case(name: &str) -> Case {
    let dir = scratch(name);
    let weights = dir.join("w.safetensors");
    random_checkpoint(&tiny(), 1)
        .unwrap()
        .save(&weights)
        .unwrap();
    let input = dir.join("x.npy");
    npy::write_tensor(
        &input,
        &Tensor::random_normal(
            Nchw {
                n: 1,
                c: 3,
                h: 64,
                w: 64,
            },
            2,
        ),
    )
    .unwrap();
    Case {
        dir,
        weights,
        input,
    }
}

/// `hrnet forward` on `weights` and `input`: it must fail with one line containing `what`.
fn cli_fails(weights: &Path, input: &Path, what: &str) {
    let out = weights.with_file_name("out.npy");
    let o = Command::new(env!("CARGO_BIN_EXE_hrnet"))
        .args(["forward", "--weights"])
        .arg(weights)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "should fail: {err}");
    assert_eq!(
        o.status.code(),
        Some(1),
        "an error exit, not a crash: {err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("error: ") && err.contains(what),
        "'{what}' not in: {err}"
    );
    assert!(!out.exists(), "no output on failure");
}

/// A safetensors file from a raw JSON header and data.
fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

fn load_err(bytes: &[u8], path: &Path) -> Error {
    std::fs::write(path, bytes).unwrap();
    match Checkpoint::load(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_files() {
    let c = case("hostile-missing");
    assert!(matches!(
        Checkpoint::load(c.dir.join("none.safetensors")),
        Err(Error::Io { .. })
    ));
    assert!(matches!(
        npy::read_tensor(c.dir.join("none.npy")),
        Err(Error::Io { .. })
    ));
    cli_fails(&c.dir.join("none.safetensors"), &c.input, "No such file");
    cli_fails(&c.weights, &c.dir.join("none.npy"), "No such file");
}

#[test]
fn truncated_corrupt_and_lying_checkpoints() {
    let c = case("hostile-checkpoint");
    let good = std::fs::read(&c.weights).unwrap();
    let p = c.dir.join("bad.safetensors");
    let rows: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 2].to_vec()),
        ("corrupt header", {
            let mut b = good.clone();
            b[8] = b'x'; // the JSON header's opening brace
            b
        }),
        ("not safetensors", b"PK\x03\x04 this is a zip file".to_vec()),
        (
            "offsets past the end",
            safetensors(
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                &[0; 8],
            ),
        ),
        (
            "overlapping offsets",
            safetensors(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                &[0; 12],
            ),
        ),
        ("a 100 GB header", {
            let mut b = (100u64 << 30).to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            b
        }),
        (
            "a shape that lies about its size",
            safetensors(
                r#"{"a":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,8]}}"#,
                &[0; 8],
            ),
        ),
    ];
    for (what, bytes) in rows {
        let e = load_err(&bytes, &p);
        assert!(matches!(e, Error::Checkpoint { .. }), "{what}: {e}");
        cli_fails(&p, &c.input, "bad.safetensors");
    }
}

/// The legacy `.pth` container (see src/weights/pth.rs) around one pickled object and no
/// storages.
fn legacy_pth(object: &[u8]) -> Vec<u8> {
    let mut b = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.".to_vec();
    b.extend_from_slice(b"\x80\x02M\xe9\x03."); // format version 1001
    b.extend_from_slice(b"\x80\x02}X\x0d\x00\x00\x00little_endian\x88s.");
    b.extend_from_slice(object);
    b.extend_from_slice(b"\x80\x02]."); // no storage keys
    b
}

#[test]
fn truncated_corrupt_lying_and_malicious_pytorch_checkpoints() {
    let c = case("hostile-pth");
    let good = std::fs::read(common::test_data().join("pth/final_state_legacy.pth")).unwrap();
    let zip = std::fs::read(common::test_data().join("pth/checkpoint_f16.pth")).unwrap();
    let p = c.dir.join("bad.pth");
    let marker = c.dir.join("ran");
    let call = format!("touch {}", marker.display());
    let mut malicious = b"\x80\x02cos\nsystem\nX".to_vec();
    malicious.extend_from_slice(&(call.len() as u32).to_le_bytes());
    malicious.extend_from_slice(call.as_bytes());
    malicious.extend_from_slice(b"\x85R.");
    let rows: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated legacy", good[..good.len() / 2].to_vec(), "ends"),
        ("truncated zip", zip[..zip.len() / 2].to_vec(), "zip"),
        (
            "a storage record that lies about its size",
            {
                let mut b = good.clone();
                // The head's storage record: its int64 element count (17 joints × 4
                // channels, 68), made 2^40.
                let at = b
                    .windows(8)
                    .position(|w| w == 68i64.to_le_bytes())
                    .expect("the head's storage record");
                b[at..at + 8].copy_from_slice(&(1i64 << 40).to_le_bytes());
                b
            },
            "elements",
        ),
        (
            "code in the pickle",
            legacy_pth(&malicious),
            "os.system(...), not a state_dict",
        ),
    ];
    for (what, bytes, says) in rows {
        let e = load_err(&bytes, &p);
        assert!(
            matches!(e, Error::Checkpoint { .. }) && e.to_string().contains(says),
            "{what}: {e}"
        );
        cli_fails(&p, &c.input, says);
    }
    assert!(!marker.exists(), "the pickle's call ran");
}

#[test]
fn wrong_dtype() {
    let c = case("hostile-dtype");
    let p = c.dir.join("int.safetensors");
    let e = load_err(
        &safetensors(
            r#"{"conv1.weight":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}}"#,
            &[0; 8],
        ),
        &p,
    );
    assert!(
        matches!(e, Error::Dtype { .. }) && e.to_string().contains("'conv1.weight'"),
        "{e}"
    );
    cli_fails(&p, &c.input, "dtype I32");
}

/// Writes `ck` next to the case's files and returns its path.
fn save(c: &Case, ck: &Checkpoint, name: &str) -> PathBuf {
    let p = c.dir.join(name);
    ck.save(&p).unwrap();
    p
}

#[test]
fn missing_unexpected_and_misshaped_tensors() {
    let c = case("hostile-tensors");
    let ck = Checkpoint::load(&c.weights).unwrap();

    let mut missing = ck.clone();
    missing.tensors.remove("layer1.0.bn2.running_var");
    let p = save(&c, &missing, "missing.safetensors");
    assert!(matches!(
        Model::load(&p, Some((64, 64))),
        Err(Error::MissingTensor { .. })
    ));
    cli_fails(
        &p,
        &c.input,
        "missing tensor 'layer1.0.bn2.running_var' (expected shape [64])",
    );

    let mut extra = ck.clone();
    extra.tensors.insert(
        "head.extra.weight".into(),
        CheckpointTensor {
            shape: vec![3],
            data: vec![1.0; 3],
        },
    );
    let p = save(&c, &extra, "extra.safetensors");
    assert!(matches!(
        Model::load(&p, Some((64, 64))),
        Err(Error::UnexpectedTensor { .. })
    ));
    cli_fails(
        &p,
        &c.input,
        "unexpected tensor 'head.extra.weight' of shape [3]",
    );

    let mut shaped = ck.clone();
    let t = shaped
        .tensors
        .get_mut("stage3.0.fuse_layers.0.2.0.weight")
        .unwrap();
    t.shape = vec![4, 4, 2, 2];
    let p = save(&c, &shaped, "shaped.safetensors");
    assert!(matches!(
        Model::load(&p, Some((64, 64))),
        Err(Error::ShapeMismatch { .. })
    ));
    cli_fails(
        &p,
        &c.input,
        "has shape [4, 4, 2, 2], expected [4, 16, 1, 1]",
    );
}

#[test]
fn checkpoint_of_another_architecture() {
    let c = case("hostile-arch");
    let mut resnet = Checkpoint::default();
    for (k, shape) in [
        ("conv1.weight", vec![64, 3, 7, 7]),
        ("layer4.2.conv3.weight", vec![2048, 512, 1, 1]),
        ("fc.weight", vec![1000, 2048]),
    ] {
        let n = shape.iter().product();
        resnet.tensors.insert(
            k.into(),
            CheckpointTensor {
                shape,
                data: vec![0.5; n],
            },
        );
    }
    let p = save(&c, &resnet, "resnet.safetensors");
    let e = Model::load(&p, None).unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
    cli_fails(&p, &c.input, "not an HRNet pose checkpoint");
}

#[test]
fn inputs_of_the_wrong_rank_channels_dtype_or_size() {
    let c = case("hostile-input");
    let rank3 = c.dir.join("rank3.npy");
    ndarray_npy::write_npy(&rank3, &ndarray::Array3::<f32>::ones((3, 64, 64))).unwrap();
    cli_fails(&c.weights, &rank3, "expected a 4-D array");
    let ints = c.dir.join("ints.npy");
    ndarray_npy::write_npy(&ints, &ndarray::Array4::<u8>::ones((1, 3, 64, 64))).unwrap();
    cli_fails(&c.weights, &ints, "is not float32 or float64");
    let gray = c.dir.join("gray.npy");
    npy::write_tensor(
        &gray,
        &Tensor::random_normal(
            Nchw {
                n: 1,
                c: 1,
                h: 64,
                w: 64,
            },
            3,
        ),
    )
    .unwrap();
    cli_fails(&c.weights, &gray, "3 channels");
    let odd = c.dir.join("odd.npy");
    npy::write_tensor(
        &odd,
        &Tensor::random_normal(
            Nchw {
                n: 1,
                c: 3,
                h: 64,
                w: 70,
            },
            3,
        ),
    )
    .unwrap();
    cli_fails(
        &c.weights,
        &odd,
        "input width 70 is not a positive multiple of 32",
    );
    let lie = c.dir.join("lie.npy");
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 3, 320, 320), }";
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    std::fs::write(&lie, &bytes).unwrap();
    cli_fails(&c.weights, &lie, "the header claims 122880000000 bytes");
}

#[test]
fn empty_batch() {
    let c = case("hostile-empty");
    let engine = CpuEngine::new(Model::load(&c.weights, Some((64, 64))).unwrap());
    let empty = Tensor::new(
        Nchw {
            n: 0,
            c: 3,
            h: 64,
            w: 64,
        },
        vec![],
    )
    .unwrap();
    assert!(matches!(engine.forward(&empty), Err(Error::Input(_))));
    let p = c.dir.join("empty.npy");
    npy::write_tensor(&p, &empty).unwrap();
    cli_fails(&c.weights, &p, "the batch is empty");
}

#[test]
fn non_finite_inputs_and_weights() {
    let c = case("hostile-nan");
    let mut x = Tensor::random_normal(
        Nchw {
            n: 2,
            c: 3,
            h: 64,
            w: 64,
        },
        5,
    )
    .into_data();
    x[3 * 64 * 64 + 77] = f32::NAN;
    let p = c.dir.join("nan.npy");
    npy::write_tensor(
        &p,
        &Tensor::new(
            Nchw {
                n: 2,
                c: 3,
                h: 64,
                w: 64,
            },
            x,
        )
        .unwrap(),
    )
    .unwrap();
    cli_fails(&c.weights, &p, "input holds NaN (image 1");

    let mut ck = Checkpoint::load(&c.weights).unwrap();
    ck.tensors
        .get_mut("stage2.0.branches.1.3.conv2.weight")
        .unwrap()
        .data[9] = f32::INFINITY;
    let w = save(&c, &ck, "inf.safetensors");
    assert!(matches!(
        Model::load(&w, Some((64, 64))),
        Err(Error::NonFinite { .. })
    ));
    cli_fails(
        &w,
        &c.input,
        "'stage2.0.branches.1.3.conv2.weight' holds inf",
    );
}

#[test]
fn images_that_do_not_decode_boxes_that_do_not_fit_and_boxes_files_that_do_not_parse() {
    let c = case("hostile-images");
    let pose = |image: &Path, extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_hrnet"))
            .args(["pose", "--no-flip", "--input-size", "64x64", "--weights"])
            .arg(&c.weights)
            .arg("--image")
            .arg(image)
            .args(extra)
            .arg("--output")
            .arg(c.dir.join("poses.json"))
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    for (name, bytes) in [
        ("text.jpg", b"hello".to_vec()),
        ("cut.png", b"\x89PNG\r\n\x1a\n\0\0".to_vec()),
    ] {
        let p = c.dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        assert!(matches!(
            hrnet::pose::io::load_image(&p),
            Err(Error::Image { .. })
        ));
        let err = pose(&p, &[]);
        assert!(
            err.contains(name) && err.contains("not a readable image"),
            "{err}"
        );
    }
    // A file `hrnet pose` must refuse with `what` in its one line, naming the file.
    let refused = |name: &str, bytes: &[u8], what: &str| {
        let p = c.dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let err = pose(&p, &[]);
        assert!(
            err.contains(name) && err.contains(what) && !err.contains("panicked"),
            "{err}"
        );
    };
    // A real JPEG whose header is made to claim 20000 × 20000 pixels (libjpeg would fill
    // 1.2 GB with grey): refused on the header, before anything is allocated.
    let mut jpeg = std::fs::read(common::test_data().join("images/baseline_420.jpg")).unwrap();
    let sof = jpeg.windows(2).position(|m| m == [0xFF, 0xC0]).unwrap();
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0x4E, 0x20, 0x4E, 0x20]);
    refused("forged.jpg", &jpeg, "claims 20000×20000 pixels");
    // A 2×1 palette PNG, CRCs right, whose palette is 4 bytes (one RGB triple and a
    // stray byte): the `png` crate panics on it; it is refused first.
    #[rustfmt::skip]
    let stray: [u8; 84] = [
        0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a,
        0, 0, 0, 13, b'I', b'H', b'D', b'R', 0, 0, 0, 2, 0, 0, 0, 1, 8, 3, 0, 0, 0,
        0xc3, 0xfc, 0x8f, 0xb8,
        0, 0, 0, 4, b'P', b'L', b'T', b'E', 200, 100, 50, 7, 0x3b, 0x90, 0xca, 0xbd,
        0, 0, 0, 11, b'I', b'D', b'A', b'T', 0x78, 0x9c, 0x63, 0x60, 0x60, 0, 0, 0, 3, 0, 1,
        0xb8, 0xad, 0x3a, 0x63,
        0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xae, 0x42, 0x60, 0x82,
    ];
    refused("stray.png", &stray, "palette has 4 bytes");
    // A lossy WebP made to claim 16383 × 16383 pixels (800 MB as RGB) in 1 KB: refused.
    let mut webp = std::fs::read(common::test_data().join("images/webp_lossy.webp")).unwrap();
    assert_eq!(&webp[12..16], b"VP8 ");
    webp[26..30].copy_from_slice(&[0xff, 0x3f, 0xff, 0x3f]);
    refused("forged.webp", &webp, "claims 16383×16383 pixels");
    // A 16-bit BMP (5 bits a channel), whose widening OpenCV does its own way: refused.
    let mut bmp = b"BM".to_vec();
    bmp.extend_from_slice(&(54u32 + 8).to_le_bytes());
    bmp.extend_from_slice(&[0, 0, 0, 0, 54, 0, 0, 0, 40, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0]);
    bmp.extend_from_slice(&[1, 0, 16, 0]);
    bmp.extend_from_slice(&[0; 24]);
    bmp.extend_from_slice(&[0x1f, 0x7c, 0xe0, 0x03, 0, 0, 0, 0]);
    refused("c555.bmp", &bmp, "a 16-bit BMP");
    let img = c.dir.join("gray.png");
    image::GrayImage::from_pixel(80, 60, image::Luma([128]))
        .save(&img)
        .unwrap();
    let err = pose(&img, &["--bbox", "10,10,0,20", "--bbox", "500,10,20,20"]);
    assert!(
        err.contains("zero area") && err.contains("outside the 80×60 image"),
        "{err}"
    );
    std::fs::write(c.dir.join("boxes.json"), "{not json").unwrap();
    let err = pose(
        &img,
        &["--boxes", c.dir.join("boxes.json").to_str().unwrap()],
    );
    assert!(
        err.contains("not a valid boxes file") && err.trim_end().lines().count() == 1,
        "{err}"
    );
}

#[test]
fn evaluation_inputs_that_do_not_fit() {
    let dir = scratch("hostile-evaluate");
    let person = |id: u64, extra: &str| {
        format!(
            r#"{{"id": {id}, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 900.0,
               "bbox": [10, 10, 20, 40], "keypoints": [{}]{extra}}}"#,
            vec!["15, 20, 2"; 17].join(", ")
        )
    };
    let good = format!(
        r#"{{"images": [{{"id": 7}}], "categories": [{{"id": 1}}],
            "annotations": [{}]}}"#,
        person(1, r#", "num_keypoints": 17"#)
    );
    let result = |image: u64, joints: usize| {
        format!(
            r#"{{"image_id": {image}, "category_id": 1, "score": 0.5, "keypoints": [{}]}}"#,
            vec!["15.5, 20.0, 0.9"; joints].join(", ")
        )
    };
    let evaluate = |annotations: &str, results: &str| {
        let (a, r) = (dir.join("ann.json"), dir.join("res.json"));
        std::fs::write(&a, annotations).unwrap();
        std::fs::write(&r, results).unwrap();
        let out = dir.join("figures.json");
        let _ = std::fs::remove_file(&out);
        let o = Command::new(env!("CARGO_BIN_EXE_hrnet"))
            .args(["evaluate", "--annotations"])
            .arg(&a)
            .arg("--results")
            .arg(&r)
            .arg("--output")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        (o.status.code(), err, out.exists())
    };
    // The well-formed pair evaluates: one person found exactly.
    let (code, err, written) = evaluate(&good, &format!("[{}]", result(7, 17)));
    assert!(code == Some(0) && written, "{err}");
    for (annotations, results, what) in [
        (
            good.clone(),
            format!("[{}]", result(8, 17)),
            "result 0 (image 8) is for an image the annotation file does not list",
        ),
        (
            good.clone(),
            format!("[{}, {}]", result(7, 17), result(7, 16)),
            "result 1 (image 7) has 48 keypoint values, not 51",
        ),
        (
            good.replace(r#""categories": [{"id": 1}],"#, ""),
            "[]".into(),
            "lists no categories",
        ),
        (
            format!(
                r#"{{"images": [{{"id": 7}}], "categories": [{{"id": 1}}], "annotations": [{}]}}"#,
                person(5, "")
            ),
            "[]".into(),
            "annotation 5 (image 7) has no num_keypoints",
        ),
        (
            good.clone(),
            "[{\"image_id\": 7}]".into(),
            "not a valid COCO keypoint results file",
        ),
        (
            "{\"images\": 3}".into(),
            "[]".into(),
            "not a valid COCO keypoint annotation file",
        ),
    ] {
        let (code, err, written) = evaluate(&annotations, &results);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.starts_with("error: ") && err.contains(what) && err.trim_end().lines().count() == 1,
            "'{what}' not in: {err}"
        );
        assert!(!written, "no figures on failure");
    }
}
