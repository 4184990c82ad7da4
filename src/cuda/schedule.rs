//! Running the branches of HRNet concurrently: each step goes to the stream of its output's
//! resolution (branch `b` on stream `b`), and waits, through events, for exactly the steps
//! of other streams it depends on: the producers of its inputs (read after write) and,
//! because activations share arena slots, the earlier readers and writer of the slot it
//! overwrites (write after read, write after write). Steps of one stream are ordered by
//! the stream itself. Captured into a CUDA graph, this is a graph whose four branches run
//! side by side.

use crate::graph::{Graph, ValueId};

/// The streams the branches use (HRNet has at most four resolutions).
pub(crate) const STREAMS: usize = 4;

/// Where each step runs and what it waits for.
#[derive(Clone, Debug)]
pub(crate) struct Schedule {
    /// The stream of each step.
    pub(crate) stream: Vec<usize>,
    /// For each step, the steps of other streams to wait for: at most one per stream, the
    /// latest (its stream runs the earlier ones before it).
    pub(crate) waits: Vec<Vec<usize>>,
}

/// The stream for a value: its branch, from its resolution (the stem's higher resolutions
/// go with branch 0).
pub(crate) fn stream_of_value(graph: &Graph, v: ValueId) -> usize {
    let top = graph.config.input_height / 4;
    let h = graph.shape(v).h.max(1);
    let mut b = 0;
    while (top >> b) > h && b + 1 < STREAMS {
        b += 1;
    }
    b
}

impl Schedule {
    /// Schedules `steps` (inputs, output) given each value's slot and each step's stream.
    pub(crate) fn new(
        steps: &[(Vec<ValueId>, ValueId)],
        slot_of: &[usize],
        stream: Vec<usize>,
    ) -> Self {
        // Values no step writes (convs folded into a fused step) have no slot.
        let slots = slot_of
            .iter()
            .copied()
            .filter(|&s| s != usize::MAX)
            .max()
            .map_or(0, |m| m + 1);
        let mut producer: Vec<Option<usize>> = vec![None; slot_of.len()];
        // Per slot: the step that last wrote it and the steps that read it since.
        let mut writer: Vec<Option<usize>> = vec![None; slots];
        let mut readers: Vec<Vec<usize>> = vec![Vec::new(); slots];
        let mut waits = Vec::with_capacity(steps.len());
        for (i, (inputs, out)) in steps.iter().enumerate() {
            let s = slot_of[out.0];
            let deps = inputs
                .iter()
                .filter_map(|v| producer[v.0])
                .chain(writer[s])
                .chain(readers[s].iter().copied());
            let mut latest = [None; STREAMS];
            for d in deps {
                let k = stream[d];
                if k != stream[i] && latest[k].is_none_or(|l| l < d) {
                    latest[k] = Some(d);
                }
            }
            waits.push(latest.iter().flatten().copied().collect());
            for v in inputs {
                readers[slot_of[v.0]].push(i);
            }
            writer[s] = Some(i);
            readers[s].clear();
            producer[out.0] = Some(i);
        }
        Schedule { stream, waits }
    }

    /// Steps on the longest chain of dependencies (stream order included): what bounds
    /// the latency of one forward when the branches overlap.
    pub(crate) fn critical_path(&self) -> usize {
        let mut depth = vec![0usize; self.stream.len()];
        let mut last_on = [None::<usize>; STREAMS];
        for i in 0..self.stream.len() {
            let before = last_on[self.stream[i]]
                .into_iter()
                .chain(self.waits[i].iter().copied())
                .map(|d| depth[d])
                .max()
                .unwrap_or(0);
            depth[i] = before + 1;
            last_on[self.stream[i]] = Some(i);
        }
        depth.into_iter().max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HrnetConfig;
    use crate::cuda::engine::plan_slots;
    use crate::graph::Chw;
    use crate::graph::fused::FusedPlan;

    /// Every pair of steps that touch one slot (at least one writing) or pass a value is
    /// ordered: the later one is after the earlier by stream order and the waits.
    fn check_ordered(io: &[(Vec<ValueId>, ValueId)], slot_of: &[usize], s: &Schedule) {
        // clock[i][k]: the latest step of stream k that step i is known to follow.
        let mut clock: Vec<[Option<usize>; STREAMS]> = Vec::with_capacity(io.len());
        let mut last_on = [None::<usize>; STREAMS];
        for i in 0..io.len() {
            let mut c = [None; STREAMS];
            let merge = |c: &mut [Option<usize>; STREAMS], o: &[Option<usize>; STREAMS]| {
                for k in 0..STREAMS {
                    c[k] = c[k].max(o[k]);
                }
            };
            for d in last_on[s.stream[i]]
                .into_iter()
                .chain(s.waits[i].iter().copied())
            {
                let cd = clock[d];
                merge(&mut c, &cd);
                c[s.stream[d]] = c[s.stream[d]].max(Some(d));
            }
            clock.push(c);
            last_on[s.stream[i]] = Some(i);
        }
        let touches = |i: usize| -> (Vec<usize>, usize) {
            let (inputs, out) = &io[i];
            (
                inputs.iter().map(|v| slot_of[v.0]).collect(),
                slot_of[out.0],
            )
        };
        for (b, clock_b) in clock.iter().enumerate() {
            let (reads_b, write_b) = touches(b);
            for a in 0..b {
                let (reads_a, write_a) = touches(a);
                let conflict =
                    write_a == write_b || reads_b.contains(&write_a) || reads_a.contains(&write_b);
                if conflict && s.stream[a] != s.stream[b] {
                    assert!(
                        clock_b[s.stream[a]] >= Some(a),
                        "step {b} (stream {}) may run before step {a} (stream {})",
                        s.stream[b],
                        s.stream[a]
                    );
                }
            }
        }
    }

    #[test]
    fn concurrent_branches_respect_every_dependency() {
        let graph = Graph::new(&HrnetConfig::preset("w32-256x192").unwrap()).unwrap();
        let len: Vec<usize> = graph.values.iter().map(Chw::len).collect();
        let direct: Vec<_> = graph.ops.iter().map(|o| (o.inputs(), o.output())).collect();
        let plan = FusedPlan::new(&graph);
        let fused: Vec<_> = plan
            .steps
            .iter()
            .map(|s| (s.inputs(), s.output()))
            .collect();
        for (what, io, last) in [
            ("direct", &direct, graph.last_uses()),
            ("fused", &fused, plan.last_uses(&graph)),
        ] {
            let streams: Vec<usize> = io.iter().map(|s| stream_of_value(&graph, s.1)).collect();
            let pools: Vec<usize> = (0..len.len())
                .map(|v| stream_of_value(&graph, ValueId(v)))
                .collect();
            let (slot_of, slot_len) = plan_slots(io, &last, &len, Some(&pools));
            let s = Schedule::new(io, &slot_of, streams);
            check_ordered(io, &slot_of, &s);
            let path = s.critical_path();
            // Pools per stream cost some memory against one shared pool; not much.
            let shared: usize = plan_slots(io, &last, &len, None).1.iter().sum();
            let pooled: usize = slot_len.iter().sum();
            println!(
                "{what}: {} steps, critical path {path}; arena {pooled} elements per image \
                 ({shared} with one pool)",
                io.len()
            );
            assert!(pooled <= 2 * shared);
            assert!(
                path < io.len() / 2,
                "{what}: the branches barely overlap ({path})"
            );
        }
    }

    #[test]
    fn values_go_to_their_branch_stream() {
        let graph = Graph::new(&HrnetConfig::preset("w32-256x192").unwrap()).unwrap();
        assert_eq!(stream_of_value(&graph, Graph::INPUT), 0);
        assert_eq!(stream_of_value(&graph, graph.output), 0);
        let coarsest = (0..graph.values.len())
            .map(ValueId)
            .find(|&v| graph.shape(v).h == 8)
            .unwrap();
        assert_eq!(stream_of_value(&graph, coarsest), 3);
    }
}
