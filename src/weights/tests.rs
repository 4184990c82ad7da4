use super::*;
use crate::cpu::ops::conv2d_direct;
use crate::graph::Chw;

/// A reduced network that keeps every official module kind.
fn tiny() -> HrnetConfig {
    let mut c = HrnetConfig::official("tiny", 4, 17, 64, 64);
    c.stages[1].modules = 2;
    c.stages[2].modules = 2;
    c.stages
        .iter_mut()
        .for_each(|s| s.blocks.iter_mut().for_each(|b| *b = 1));
    c
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hrnet-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A checkpoint holding only the shapes the graph expects (no data).
fn shapes_only(graph: &Graph) -> Checkpoint {
    let mut ck = Checkpoint::default();
    for (k, shape) in Checkpoint::expected(graph) {
        ck.tensors.insert(
            k,
            CheckpointTensor {
                shape,
                data: vec![],
            },
        );
    }
    ck
}

#[test]
fn w32_has_every_official_key() {
    let g = Graph::new(&HrnetConfig::preset("w32-256x192").unwrap()).unwrap();
    let keys = Checkpoint::expected(&g);
    let bns = g.layers.iter().filter(|l| l.bn.is_some()).count();
    assert_eq!(bns, 292);
    // 292 convs × (weight + 4 BN tensors + num_batches_tracked) + the head's two.
    assert_eq!(keys.len() + bns, 1754);
    let find = |k: &str| {
        keys.iter()
            .find(|(key, _)| key == k)
            .map(|(_, s)| s.clone())
    };
    assert_eq!(
        find("stage2.0.fuse_layers.1.0.0.0.weight"),
        Some(vec![64, 32, 3, 3])
    );
    assert_eq!(find("transition1.1.0.0.weight"), Some(vec![64, 256, 3, 3]));
    assert_eq!(find("layer1.0.downsample.1.running_var"), Some(vec![256]));
    assert_eq!(
        find("stage4.0.fuse_layers.0.3.0.weight"),
        Some(vec![32, 256, 1, 1])
    );
    assert_eq!(
        find("stage4.0.fuse_layers.3.0.2.0.weight"),
        Some(vec![256, 32, 3, 3])
    );
    assert_eq!(find("final_layer.bias"), Some(vec![17]));
}

#[test]
fn configuration_is_derived_from_shapes() {
    for preset in crate::config::PRESETS {
        let config = HrnetConfig::preset(preset).unwrap();
        let ck = shapes_only(&Graph::new(&config).unwrap());
        let derived = ck
            .infer_config(Some((config.input_height, config.input_width)))
            .unwrap();
        assert_eq!(derived.stages, config.stages, "{preset}");
        assert_eq!(derived.num_joints, config.num_joints);
        assert_eq!(derived.final_conv_kernel, 1);
        // Without a size, the official one for the dataset.
        let default = ck.infer_config(None).unwrap();
        let want = if config.num_joints == 16 {
            (256, 256)
        } else {
            (256, 192)
        };
        assert_eq!((default.input_height, default.input_width), want);
    }
    let mut c = tiny();
    c.final_conv_kernel = 3;
    let derived = shapes_only(&Graph::new(&c).unwrap())
        .infer_config(Some((64, 64)))
        .unwrap();
    assert_eq!(
        (derived.stages.clone(), derived.final_conv_kernel),
        (c.stages.clone(), 3)
    );
    assert!(Checkpoint::default().infer_config(None).is_err());
}

#[test]
fn folded_bn_equals_conv_then_bn() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_pcg::Pcg64::seed_from_u64(rand::random());
    let l = ConvLayer {
        name: "c".into(),
        bn: Some("b".into()),
        cin: 3,
        cout: 4,
        kernel: 3,
        stride: 2,
    };
    let mut v = |n: usize, lo: f32, hi: f32| -> Vec<f32> {
        (0..n).map(|_| rng.random_range(lo..hi)).collect()
    };
    let (w, x) = (v(l.weight_len(), -1.0, 1.0), v(3 * 7 * 5, -2.0, 2.0));
    let (gamma, beta, mean, var) = (
        v(4, 0.5, 2.0),
        v(4, -1.0, 1.0),
        v(4, -1.0, 1.0),
        v(4, 0.1, 3.0),
    );
    let wide = |a: &[f32]| a.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
    let s = Chw { c: 3, h: 7, w: 5 };
    let raw = conv2d_direct(&wide(&x), s, &l, &wide(&w), &[0.0; 4]);
    let f = fold_bn(&w, &gamma, &beta, &mean, &var);
    let folded = conv2d_direct(&wide(&x), s, &l, &wide(&f.weight), &wide(&f.bias));
    let plane = raw.len() / 4;
    for (i, (r, got)) in raw.iter().zip(&folded).enumerate() {
        let c = i / plane;
        let bn = (r - f64::from(mean[c])) / (f64::from(var[c]) + BN_EPS).sqrt()
            * f64::from(gamma[c])
            + f64::from(beta[c]);
        approx::assert_relative_eq!(*got, bn, epsilon = 1e-5, max_relative = 1e-5);
    }
}

/// The f64 parameters are the folds before rounding: the checkpoint's values times the BN
/// factor in f64 (the head's own, widened); the f32 parameters are their rounding, also
/// after `with_input`.
#[test]
fn f64_parameters_are_the_unrounded_folds() {
    let config = tiny();
    let ck = random_checkpoint(&config, 5).unwrap();
    let model = Model::from_checkpoint(&ck, &config).unwrap();
    let wide = model.with_input(64, 64).unwrap().params_f64();
    assert_eq!(wide, model.params_f64());
    let t = |k: String| &ck.tensors[&k].data;
    let mut rounded_away = 0;
    for ((l, p), w) in model.layers().zip(&wide) {
        let raw = t(format!("{}.weight", l.name));
        let per_out = raw.len() / l.cout;
        for (i, (&r, &v)) in raw.iter().zip(&w.weight).enumerate() {
            let s = match &l.bn {
                Some(bn) => {
                    let co = i / per_out;
                    f64::from(t(format!("{bn}.weight"))[co])
                        / (f64::from(t(format!("{bn}.running_var"))[co]) + BN_EPS).sqrt()
                }
                None => 1.0,
            };
            assert_eq!(v, f64::from(r) * s, "{} weight {i}", l.name);
            assert_eq!(p.weight[i], v as f32);
            rounded_away += usize::from(f64::from(p.weight[i]) != v);
        }
        let narrowed: Vec<f32> = w.bias.iter().map(|&b| b as f32).collect();
        assert_eq!(narrowed, p.bias, "{} bias", l.name);
    }
    assert!(rounded_away > 0, "the f32 fold rounds");
}

#[test]
fn random_checkpoints_round_trip_through_safetensors() {
    let config = tiny();
    let ck = random_checkpoint(&config, 3).unwrap();
    assert_eq!(
        ck,
        random_checkpoint(&config, 3).unwrap(),
        "same seed, same checkpoint"
    );
    assert_ne!(ck, random_checkpoint(&config, 4).unwrap());
    let path = temp("round.safetensors");
    ck.save(&path).unwrap();
    let back = Checkpoint::load(&path).unwrap();
    assert_eq!(back, ck);
    let model = Model::load(&path, Some((64, 64))).unwrap();
    assert_eq!(model.graph.config.stages, config.stages);
    assert_eq!(model.params.len(), model.graph.layers.len());
}

/// Writes `ck` with every float tensor in `dtype` (and optionally a `module.` prefix).
fn save_as(ck: &Checkpoint, dtype: Dtype, prefix: &str, path: &Path) {
    let mut bufs = Vec::new();
    for (k, t) in &ck.tensors {
        let bytes: Vec<u8> = match dtype {
            Dtype::F16 => t
                .data
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            Dtype::BF16 => t
                .data
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
            Dtype::F64 => t
                .data
                .iter()
                .flat_map(|&v| f64::from(v).to_le_bytes())
                .collect(),
            Dtype::I32 => t
                .data
                .iter()
                .flat_map(|&v| (v as i32).to_le_bytes())
                .collect(),
            _ => t.data.iter().flat_map(|&v| v.to_le_bytes()).collect(),
        };
        bufs.push((format!("{prefix}{k}"), t.shape.clone(), bytes));
    }
    let views: Vec<(String, TensorView<'_>)> = bufs
        .iter()
        .map(|(k, s, b)| (k.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn half_precision_and_data_parallel_checkpoints_load() {
    let config = tiny();
    let ck = random_checkpoint(&config, 5).unwrap();
    for (dtype, tol) in [(Dtype::F16, 1e-3), (Dtype::BF16, 1e-2), (Dtype::F64, 0.0)] {
        let path = temp(&format!("{dtype:?}.safetensors"));
        save_as(&ck, dtype, "module.", &path);
        let back = Checkpoint::load(&path).unwrap();
        for (k, t) in &ck.tensors {
            let b = &back.tensors[k];
            assert_eq!(b.shape, t.shape);
            for (x, y) in b.data.iter().zip(&t.data) {
                assert!(
                    (x - y).abs() <= tol * y.abs().max(1e-3),
                    "{dtype:?} {k}: {x} vs {y}"
                );
            }
        }
        Model::from_checkpoint(&back, &config).unwrap();
    }
}

fn load_err(ck: &Checkpoint) -> String {
    Model::from_checkpoint(ck, &tiny()).unwrap_err().to_string()
}

#[test]
fn bad_checkpoints_name_the_key() {
    let ck = random_checkpoint(&tiny(), 9).unwrap();

    let mut missing = ck.clone();
    missing
        .tensors
        .remove("stage3.1.fuse_layers.2.0.1.1.running_mean");
    let e = load_err(&missing);
    assert!(
        e.contains("missing tensor 'stage3.1.fuse_layers.2.0.1.1.running_mean'")
            && e.contains("[16]"),
        "{e}"
    );

    let mut shaped = ck.clone();
    shaped
        .tensors
        .get_mut("transition2.2.0.0.weight")
        .unwrap()
        .shape = vec![16, 8, 1, 9];
    let e = load_err(&shaped);
    assert!(
        e.contains("'transition2.2.0.0.weight'")
            && e.contains("[16, 8, 1, 9]")
            && e.contains("[16, 8, 3, 3]"),
        "{e}"
    );

    let mut extra = ck.clone();
    extra.tensors.insert(
        "head.fc.weight".into(),
        CheckpointTensor {
            shape: vec![2, 2],
            data: vec![0.5; 4],
        },
    );
    let e = load_err(&extra);
    assert!(
        e.contains("unexpected tensor 'head.fc.weight'") && e.contains("[2, 2]"),
        "{e}"
    );

    let mut stray = ck.clone();
    stray.counters.insert("nowhere.num_batches_tracked".into());
    assert!(load_err(&stray).contains("'nowhere.num_batches_tracked'"));

    let mut nan = ck.clone();
    nan.tensors.get_mut("layer1.2.conv2.weight").unwrap().data[5] = f32::NAN;
    assert!(load_err(&nan).contains("'layer1.2.conv2.weight' holds NaN"));

    let mut neg = ck.clone();
    neg.tensors.get_mut("bn1.running_var").unwrap().data[0] = -1.0;
    assert!(load_err(&neg).contains("negative variance"));
}

#[test]
fn bad_files_give_typed_errors() {
    let ck = random_checkpoint(&tiny(), 11).unwrap();
    let path = temp("good.safetensors");
    ck.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();

    let truncated = temp("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let e = Checkpoint::load(&truncated).unwrap_err();
    assert!(matches!(e, Error::Checkpoint { .. }), "{e}");
    assert!(e.to_string().contains("truncated.safetensors"), "{e}");

    let junk = temp("junk.safetensors");
    std::fs::write(&junk, b"not a checkpoint at all").unwrap();
    assert!(matches!(
        Checkpoint::load(&junk),
        Err(Error::Checkpoint { .. })
    ));
    assert!(matches!(
        Checkpoint::load(temp("absent.safetensors")),
        Err(Error::Io { .. })
    ));

    let ints = temp("int.safetensors");
    save_as(&ck, Dtype::I32, "", &ints);
    let e = Checkpoint::load(&ints).unwrap_err();
    assert!(
        matches!(e, Error::Dtype { .. }) && e.to_string().contains("I32"),
        "{e}"
    );
}
