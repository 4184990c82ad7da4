//! The HRNet configuration: the fields of the official experiment files
//! (`experiments/*/hrnet/*.yaml`, `MODEL.EXTRA`) and presets named after them.

use std::fmt;

use crate::error::{Error, Result};

/// Channels of the stem and layer1 are fixed by the official code
/// (`_make_layer(Bottleneck, 64, 4)`), not by the experiment files.
pub const STEM_CHANNELS: usize = 64;
/// Bottleneck expansion of layer1: its output has `4 × 64` channels.
pub const LAYER1_CHANNELS: usize = 256;
/// Number of Bottlenecks in layer1.
pub const LAYER1_BLOCKS: usize = 4;
/// The network's total downsampling from input to heatmap (two stride-2 stem convs).
pub const HEATMAP_STRIDE: usize = 4;
/// The input's height and width must be multiples of this: branch 3 runs at 1/32.
pub const INPUT_MULTIPLE: usize = 32;
/// Batch-norm epsilon of every BN in the official model.
pub const BN_EPS: f64 = 1e-5;

/// One of stages 2, 3 and 4: `NUM_MODULES`, `NUM_BRANCHES`, `NUM_BLOCKS` and
/// `NUM_CHANNELS` of the official files (`BLOCK: BASIC`, `FUSE_METHOD: SUM`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageConfig {
    /// How many high-resolution modules (each: branches, then an exchange unit).
    pub modules: usize,
    /// BasicBlocks per branch; its length is the number of branches.
    pub blocks: Vec<usize>,
    /// Width of each branch, highest resolution first.
    pub channels: Vec<usize>,
}

impl StageConfig {
    /// Number of parallel resolutions in this stage.
    #[must_use]
    pub fn branches(&self) -> usize {
        self.channels.len()
    }
}

/// A whole HRNet pose network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HrnetConfig {
    /// Preset name or a description of where the configuration came from.
    pub name: String,
    /// Number of output heatmaps (`MODEL.NUM_JOINTS`).
    pub num_joints: usize,
    /// Input height in pixels (`MODEL.IMAGE_SIZE[1]`).
    pub input_height: usize,
    /// Input width in pixels (`MODEL.IMAGE_SIZE[0]`).
    pub input_width: usize,
    /// Stages 2, 3 and 4, in order.
    pub stages: [StageConfig; 3],
    /// `FINAL_CONV_KERNEL`: 1 (all official presets) or 3.
    pub final_conv_kernel: usize,
}

/// The preset names, in the order `hrnet summary` lists them.
pub const PRESETS: [&str; 7] = [
    "w32-256x192",
    "w32-384x288",
    "w48-256x192",
    "w48-384x288",
    "w32-256x256-mpii",
    "w48-256x256-mpii",
    "w18-256x192",
];

/// COCO's 17 keypoints.
pub const COCO_JOINTS: usize = 17;
/// MPII's 16 keypoints.
pub const MPII_JOINTS: usize = 16;

impl HrnetConfig {
    /// The official stage layout (1/4/3 modules, 4 blocks per branch) at width `w`,
    /// branch widths `w, 2w, 4w, 8w`.
    #[must_use]
    pub fn official(name: &str, width: usize, num_joints: usize, height: usize, w: usize) -> Self {
        let stage = |modules: usize, branches: usize| StageConfig {
            modules,
            blocks: vec![4; branches],
            channels: (0..branches).map(|b| width << b).collect(),
        };
        HrnetConfig {
            name: name.to_string(),
            num_joints,
            input_height: height,
            input_width: w,
            stages: [stage(1, 2), stage(4, 3), stage(3, 4)],
            final_conv_kernel: 1,
        }
    }

    /// A preset named after the official experiment files (see [`PRESETS`]).
    pub fn preset(name: &str) -> Result<Self> {
        let (width, joints, h, w) = match name {
            "w32-256x192" => (32, COCO_JOINTS, 256, 192),
            "w32-384x288" => (32, COCO_JOINTS, 384, 288),
            "w48-256x192" => (48, COCO_JOINTS, 256, 192),
            "w48-384x288" => (48, COCO_JOINTS, 384, 288),
            "w32-256x256-mpii" => (32, MPII_JOINTS, 256, 256),
            "w48-256x256-mpii" => (48, MPII_JOINTS, 256, 256),
            "w18-256x192" => (18, COCO_JOINTS, 256, 192),
            _ => {
                return Err(Error::UnknownPreset {
                    name: name.to_string(),
                    known: PRESETS.join(", "),
                });
            }
        };
        Ok(Self::official(name, width, joints, h, w))
    }

    /// The same network at another input size (checked by [`HrnetConfig::validate`]).
    #[must_use]
    pub fn with_input(mut self, height: usize, width: usize) -> Self {
        self.input_height = height;
        self.input_width = width;
        self
    }

    /// Heatmap height and width: the input's, divided by 4.
    #[must_use]
    pub fn heatmap_size(&self) -> (usize, usize) {
        (
            self.input_height / HEATMAP_STRIDE,
            self.input_width / HEATMAP_STRIDE,
        )
    }

    /// Width of the highest-resolution branch (the "W" of W32).
    #[must_use]
    pub fn width(&self) -> usize {
        self.stages[0].channels[0]
    }

    /// Checks everything the official code would build and run without error.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        for (what, v) in [("height", self.input_height), ("width", self.input_width)] {
            if v == 0 || !v.is_multiple_of(INPUT_MULTIPLE) {
                return bad(format!(
                    "input {what} {v} is not a positive multiple of {INPUT_MULTIPLE} \
                     (HRNet's lowest branch runs at 1/32 of the input)"
                ));
            }
        }
        if self.num_joints == 0 {
            return bad("the number of joints must be at least 1".into());
        }
        if self.final_conv_kernel != 1 && self.final_conv_kernel != 3 {
            return bad(format!(
                "FINAL_CONV_KERNEL must be 1 or 3, not {}",
                self.final_conv_kernel
            ));
        }
        let mut previous: Vec<usize> = vec![LAYER1_CHANNELS];
        for (s, stage) in self.stages.iter().enumerate() {
            let n = s + 2;
            if stage.branches() != n {
                return bad(format!(
                    "stage {n} must have {n} branches, found {}",
                    stage.branches()
                ));
            }
            if stage.blocks.len() != stage.branches() {
                return bad(format!(
                    "stage {n}: NUM_BLOCKS has {} entries for {} branches",
                    stage.blocks.len(),
                    stage.branches()
                ));
            }
            if stage.modules == 0 {
                return bad(format!("stage {n} must have at least one module"));
            }
            if let Some(b) = stage.blocks.iter().position(|&b| b == 0) {
                return bad(format!(
                    "stage {n}, branch {b}: at least one block is needed"
                ));
            }
            if let Some(b) = stage.channels.iter().position(|&c| c == 0) {
                return bad(format!("stage {n}, branch {b}: zero channels"));
            }
            // The official forward feeds every non-identity transition of stages 3 and 4
            // from the lowest branch, so an existing branch may not change width there.
            if s > 0 {
                for (b, (&prev, &cur)) in previous.iter().zip(&stage.channels).enumerate() {
                    if prev != cur {
                        return bad(format!(
                            "stage {n}, branch {b}: width {cur} differs from the previous stage's \
                             {prev}; the official model cannot run such a network"
                        ));
                    }
                }
            }
            previous.clone_from(&stage.channels);
        }
        Ok(())
    }
}

impl fmt::Display for HrnetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: W{} {}x{} input, {} joints, modules {}/{}/{}",
            self.name,
            self.width(),
            self.input_height,
            self.input_width,
            self.num_joints,
            self.stages[0].modules,
            self.stages[1].modules,
            self.stages[2].modules
        )
    }
}

/// Parses `HxW` (e.g. `256x192`) as height and width.
pub fn parse_size(s: &str) -> Result<(usize, usize)> {
    let err = || {
        Error::Config(format!(
            "'{s}' is not a size of the form HEIGHTxWIDTH, e.g. 256x192"
        ))
    };
    let (h, w) = s.split_once(['x', 'X']).ok_or_else(err)?;
    Ok((
        h.trim().parse().map_err(|_| err())?,
        w.trim().parse().map_err(|_| err())?,
    ))
}

/// The input size an official model-zoo file states in its name (`pose_hrnet_w48_384x288.pth`
/// is 384×288, HEIGHTxWIDTH as the official experiment names go): the last `_`- or
/// `-`-separated part of the file's stem that is `HxW` with both multiples of 32.
#[must_use]
pub fn size_in_name(path: &std::path::Path) -> Option<(usize, usize)> {
    let stem = path.file_stem()?.to_str()?;
    stem.rsplit(['_', '-']).find_map(|part| {
        let (h, w) = part.split_once('x')?;
        let all_digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(h) || !all_digits(w) {
            return None;
        }
        let (h, w) = (h.parse::<usize>().ok()?, w.parse::<usize>().ok()?);
        (h > 0 && w > 0 && h % 32 == 0 && w % 32 == 0).then_some((h, w))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_file_names_give_their_input_size() {
        let size = |name: &str| size_in_name(std::path::Path::new(name));
        assert_eq!(size("models/pose_hrnet_w48_384x288.pth"), Some((384, 288)));
        assert_eq!(size("pose_hrnet_w32_256x256.pth"), Some((256, 256)));
        assert_eq!(size("w32-256x192.safetensors"), Some((256, 192)));
        assert_eq!(
            size("pose_hrnet_w32_256x192_finetuned.pth"),
            Some((256, 192))
        );
        for none in [
            "weights.safetensors",
            "w32_250x190.pth",
            "w32_x192.pth",
            "a_256x.pth",
            "0x0.pth",
            "w32_+256x192.pth",
        ] {
            assert_eq!(size(none), None, "{none}");
        }
    }

    #[test]
    fn every_preset_is_valid() {
        for name in PRESETS {
            let c = HrnetConfig::preset(name).unwrap();
            c.validate().unwrap();
            assert_eq!(c.name, name);
        }
        let w18 = HrnetConfig::preset("w18-256x192").unwrap();
        assert_eq!(w18.stages[2].channels, vec![18, 36, 72, 144]);
        let mpii = HrnetConfig::preset("w48-256x256-mpii").unwrap();
        assert_eq!(
            (mpii.num_joints, mpii.input_height, mpii.input_width),
            (16, 256, 256)
        );
    }

    #[test]
    fn unknown_preset_lists_the_known_ones() {
        let e = HrnetConfig::preset("w64").unwrap_err().to_string();
        assert!(e.contains("w64") && e.contains("w32-256x192"), "{e}");
    }

    #[test]
    fn input_must_be_a_multiple_of_32() {
        let c = HrnetConfig::preset("w32-256x192")
            .unwrap()
            .with_input(250, 192);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("250") && e.contains("multiple of 32"), "{e}");
        let c = HrnetConfig::preset("w32-256x192")
            .unwrap()
            .with_input(256, 0);
        assert!(c.validate().is_err());
    }

    #[test]
    fn inconsistent_stages_are_rejected() {
        let mut c = HrnetConfig::preset("w32-256x192").unwrap();
        c.stages[1].channels[0] = 40;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("stage 3, branch 0")
        );
        let mut c = HrnetConfig::preset("w32-256x192").unwrap();
        c.stages[2].blocks.pop();
        assert!(c.validate().is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("256x192").unwrap(), (256, 192));
        assert!(parse_size("256").is_err());
        assert!(parse_size("ax3").is_err());
    }
}
