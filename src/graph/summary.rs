//! The layer table and totals that `hrnet summary` prints.

use std::fmt;

use super::{Graph, Op};

/// One row of the table.
#[derive(Clone, Debug)]
pub struct Row {
    /// Layer or exchange-unit name.
    pub name: String,
    /// `conv3x3/s2`, `conv1x1`, `exchange(3)` ...
    pub kind: String,
    /// Input shape (`CxHxW`, first input for exchange units).
    pub input: String,
    /// Output shape.
    pub output: String,
    /// Trainable parameters.
    pub params: usize,
    /// Multiply-adds per image.
    pub macs: usize,
}

/// Totals and per-op rows of a graph.
#[derive(Clone, Debug)]
pub struct Summary {
    /// What the graph was built from.
    pub config: String,
    /// The rows, in execution order.
    pub rows: Vec<Row>,
    /// Trainable parameters, as `sum(p.numel() for p in model.parameters())` counts them.
    pub params: usize,
    /// Convolution multiply-adds per image.
    pub conv_macs: usize,
    /// Number of convolutions.
    pub convs: usize,
}

impl Summary {
    pub(super) fn new(g: &Graph) -> Self {
        let mut rows = Vec::with_capacity(g.ops.len());
        for op in &g.ops {
            match op {
                Op::Conv(c) => {
                    let l = &g.layers[c.layer];
                    let out = g.shape(c.output);
                    let mut kind = format!("conv{0}x{0}", l.kernel);
                    if l.stride != 1 {
                        kind += &format!("/s{}", l.stride);
                    }
                    if c.residual.is_some() {
                        kind += "+res";
                    }
                    if c.relu {
                        kind += "+relu";
                    }
                    rows.push(Row {
                        name: l.name.clone(),
                        kind,
                        input: g.shape(c.input).to_string(),
                        output: out.to_string(),
                        params: l.params(),
                        macs: l.weight_len() * out.h * out.w,
                    });
                }
                Op::Exchange(e) => rows.push(Row {
                    name: e.name.clone(),
                    kind: format!("exchange({})+relu", e.terms.len()),
                    input: g.shape(e.terms[0].0).to_string(),
                    output: g.shape(e.output).to_string(),
                    params: 0,
                    macs: 0,
                }),
            }
        }
        Summary {
            config: g.config.to_string(),
            params: rows.iter().map(|r| r.params).sum(),
            conv_macs: rows.iter().map(|r| r.macs).sum(),
            convs: g.layers.len(),
            rows,
        }
    }
}

/// `28536113` → `28,536,113`.
#[must_use]
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.config)?;
        writeln!(
            f,
            "{:>4}  {:<34} {:<20} {:>12} {:>12} {:>11} {:>15}",
            "#", "layer", "op", "input", "output", "params", "mult-adds"
        )?;
        for (i, r) in self.rows.iter().enumerate() {
            writeln!(
                f,
                "{:>4}  {:<34} {:<20} {:>12} {:>12} {:>11} {:>15}",
                i,
                r.name,
                r.kind,
                r.input,
                r.output,
                thousands(r.params),
                thousands(r.macs)
            )?;
        }
        write!(f, "{}", self.totals())
    }
}

impl Summary {
    /// The three totals, one per line (what `hrnet summary --totals` prints after the
    /// configuration).
    #[must_use]
    pub fn totals(&self) -> String {
        format!(
            "params        {}\nconv mult-adds {} per image\nconvolutions  {}",
            thousands(self.params),
            thousands(self.conv_macs),
            self.convs
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HrnetConfig;

    fn totals(preset: &str) -> (usize, usize, usize) {
        let s = Graph::new(&HrnetConfig::preset(preset).unwrap())
            .unwrap()
            .summary();
        (s.params, s.conv_macs, s.convs)
    }

    #[test]
    fn totals_match_the_official_model() {
        assert_eq!(totals("w32-256x192"), (28_536_113, 7_645_003_776, 293));
        let (p, m, _) = totals("w48-384x288");
        assert_eq!((p, m), (63_595_745, 35_306_606_592));
        let (p, m, _) = totals("w32-256x256-mpii");
        assert_eq!((p, m), (28_536_080, 10_193_207_296));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(28_536_113), "28,536,113");
    }
}
