//! Running HRNet's steps concurrently, and where their values live.
//!
//! Memory: every value takes an arena slot, and a slot is reused by a later value only if
//! every step that wrote or read the slot before is already ordered before the new writer
//! by the data itself (it is an ancestor of the writer: the writer reads, directly or not,
//! what each of them produced). Reusing memory so never makes one step wait for another
//! that it does not already wait for, and the arena is no larger for it: W32's
//! tensor-core program takes 2.79 M elements per image, where a pool of slots per branch
//! took 3.30 M (and one pool for all, which chained nearly every step, 2.83 M), the image
//! counted at 3 channels in all three.
//!
//! Streams: each step goes to the stream that delays it least (below), and waits, through
//! events, for exactly the steps of other streams it depends on: the producers of its
//! inputs (read after write) and the earlier readers and writer of the slot it overwrites
//! (write after read, write after write; already ancestors, by the slot plan, but waited
//! for all the same, so that the schedule is right for any slot plan). Steps of one
//! stream are ordered by the stream itself. Captured into a CUDA graph, this is a graph
//! whose longest chain is the data's own: on W32 98 of the 291 tensor-core steps (102 of
//! the direct program's 316), where one stream per branch gave 123 (140): a branch's side
//! steps, such as the 1×1 convolutions an exchange unit upsamples, queued behind its main
//! chain.

use crate::graph::{Graph, ValueId};

/// The streams steps are spread over. HRNet has four branches, each with side steps
/// beside its main chain, and an unfused exchange unit has up to 12 steps side by side:
/// with 16 every preset's chain is the data's own (with 8, the direct program's W32 chain
/// is one step longer).
pub(crate) const STREAMS: usize = 16;

/// Steps as (inputs, output), in execution order.
pub(crate) type Steps = [(Vec<ValueId>, ValueId)];

/// For each step, the set of steps it depends on through the data, directly or not.
struct Ancestry {
    words: usize,
    bits: Vec<u64>,
}

impl Ancestry {
    fn new(steps: &Steps, values: usize) -> Self {
        let words = steps.len().div_ceil(64);
        let mut bits = vec![0u64; steps.len() * words];
        let mut producer: Vec<Option<usize>> = vec![None; values];
        for (i, (inputs, out)) in steps.iter().enumerate() {
            for p in inputs.iter().filter_map(|v| producer[v.0]) {
                let (before, row) = bits.split_at_mut(i * words);
                let row = &mut row[..words];
                row.iter_mut()
                    .zip(&before[p * words..(p + 1) * words])
                    .for_each(|(r, a)| *r |= a);
                row[p / 64] |= 1 << (p % 64);
            }
            producer[out.0] = Some(i);
        }
        Ancestry { words, bits }
    }

    /// Whether step `a` is ordered before step `b` by the data.
    fn precedes(&self, a: usize, b: usize) -> bool {
        self.bits[b * self.words + a / 64] >> (a % 64) & 1 == 1
    }
}

/// Assigns every value an arena slot, given the steps, each value's last reader and its
/// per-image length: a value takes the smallest free slot that fits among those whose
/// earlier users all precede its writer through the data (else the largest such, grown;
/// else a new slot), and a step frees its inputs' slots after their last read, never
/// before its own slot is taken, so a step never reads and writes the same slot. The
/// input (`Graph::INPUT`) has the first slot. Returns the slot of each value and each
/// slot's per-image length.
pub(crate) fn plan_slots(
    steps: &Steps,
    last: &[usize],
    value_len: &[usize],
) -> (Vec<usize>, Vec<usize>) {
    let ancestry = Ancestry::new(steps, value_len.len());
    let mut slot_of = vec![usize::MAX; value_len.len()];
    // Per slot: its length, and the steps that wrote or read its latest value.
    let mut len = vec![value_len[Graph::INPUT.0]];
    let mut users: Vec<Vec<usize>> = vec![Vec::new()];
    slot_of[Graph::INPUT.0] = 0;
    let mut free: Vec<usize> = Vec::new();
    for (i, (inputs, out)) in steps.iter().enumerate() {
        let need = value_len[out.0];
        let ready: Vec<usize> = free
            .iter()
            .copied()
            .filter(|&s| users[s].iter().all(|&u| ancestry.precedes(u, i)))
            .collect();
        let fit = ready
            .iter()
            .copied()
            .filter(|&s| len[s] >= need)
            .min_by_key(|&s| len[s])
            .or_else(|| ready.iter().copied().max_by_key(|&s| len[s]));
        let slot = match fit {
            Some(s) => {
                free.retain(|&f| f != s);
                len[s] = len[s].max(need);
                users[s].clear();
                s
            }
            None => {
                len.push(need);
                users.push(Vec::new());
                len.len() - 1
            }
        };
        slot_of[out.0] = slot;
        users[slot].push(i);
        for v in inputs {
            users[slot_of[v.0]].push(i);
        }
        for v in inputs {
            let s = slot_of[v.0];
            if last[v.0] == i && !free.contains(&s) {
                free.push(s);
            }
        }
    }
    (slot_of, len)
}

/// Where each step runs and what it waits for.
#[derive(Clone, Debug)]
pub(crate) struct Schedule {
    /// The stream of each step.
    pub(crate) stream: Vec<usize>,
    /// For each step, the steps of other streams to wait for: at most one per stream, the
    /// latest (its stream runs the earlier ones before it).
    pub(crate) waits: Vec<Vec<usize>>,
}

impl Schedule {
    /// Schedules `steps` whose values live in `slot_of`. Each step goes to the stream that
    /// delays it least: the stream of one of its deepest dependencies that is still its
    /// stream's last step (the chain goes on at no cost); else a stream whose last step is
    /// no deeper than those dependencies (the deepest such, keeping shallower ones for
    /// later); else the shallowest. Depth: the longest chain of steps ending at a step, stream
    /// order included.
    pub(crate) fn new(steps: &Steps, slot_of: &[usize]) -> Self {
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
        let mut depth = vec![0usize; steps.len()];
        let mut stream = Vec::with_capacity(steps.len());
        let mut last_on = [None::<usize>; STREAMS];
        let mut waits = Vec::with_capacity(steps.len());
        for (i, (inputs, out)) in steps.iter().enumerate() {
            let s = slot_of[out.0];
            let deps: Vec<usize> = inputs
                .iter()
                .filter_map(|v| producer[v.0])
                .chain(writer[s])
                .chain(readers[s].iter().copied())
                .collect();
            let ready = deps.iter().map(|&d| depth[d]).max().unwrap_or(0);
            let tail = |k: usize| last_on[k].map_or(0, |l| depth[l]);
            let k = deps
                .iter()
                .copied()
                .find(|&d| depth[d] == ready && last_on[stream[d]] == Some(d))
                .map(|d| stream[d])
                .or_else(|| {
                    (0..STREAMS)
                        .filter(|&k| tail(k) <= ready)
                        .max_by_key(|&k| tail(k))
                })
                .unwrap_or_else(|| (0..STREAMS).min_by_key(|&k| tail(k)).unwrap_or(0));
            depth[i] = ready.max(tail(k)) + 1;
            let mut latest = [None; STREAMS];
            for d in deps {
                let j = stream[d];
                if j != k && latest[j].is_none_or(|l| l < d) {
                    latest[j] = Some(d);
                }
            }
            waits.push(latest.iter().flatten().copied().collect());
            stream.push(k);
            last_on[k] = Some(i);
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

    /// The longest chain of steps through the data alone (no stream order, no slots).
    fn data_depth(io: &Steps, values: usize) -> usize {
        let mut depth = vec![0usize; io.len()];
        let mut producer: Vec<Option<usize>> = vec![None; values];
        for (i, (inputs, out)) in io.iter().enumerate() {
            depth[i] = 1 + inputs
                .iter()
                .filter_map(|v| producer[v.0])
                .map(|p| depth[p])
                .max()
                .unwrap_or(0);
            producer[out.0] = Some(i);
        }
        depth.into_iter().max().unwrap_or(0)
    }

    /// Checks that no two values alive at once share a slot and that every slot holds its
    /// values; returns the most elements alive at once (per image), which no slot plan can
    /// go below.
    fn check_slots(
        io: &Steps,
        last: &[usize],
        len: &[usize],
        slot_of: &[usize],
        slot_len: &[usize],
    ) -> usize {
        let mut born = vec![usize::MAX; len.len()];
        born[Graph::INPUT.0] = 0;
        for (i, (_, out)) in io.iter().enumerate() {
            born[out.0] = i;
        }
        let mut peak = 0;
        for i in 0..io.len() {
            let live: Vec<usize> = (0..len.len())
                .filter(|&v| born[v] <= i && i <= last[v])
                .collect();
            for (a, &u) in live.iter().enumerate() {
                assert!(
                    slot_len[slot_of[u]] >= len[u],
                    "value {u} outgrows its slot"
                );
                for &v in &live[a + 1..] {
                    assert_ne!(
                        slot_of[u], slot_of[v],
                        "values {u} and {v} share a slot at step {i}"
                    );
                }
            }
            peak = peak.max(live.iter().map(|&v| len[v]).sum::<usize>());
        }
        peak
    }

    #[test]
    fn slots_never_alias_and_concurrent_steps_wait_only_on_the_data() {
        for preset in ["w32-256x192", "w48-384x288", "w32-256x256-mpii"] {
            let graph = Graph::new(&HrnetConfig::preset(preset).unwrap()).unwrap();
            let mut len: Vec<usize> = graph.values.iter().map(Chw::len).collect();
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
                if what == "fused" {
                    // The tensor-core program stores the image with 8 channels.
                    len[Graph::INPUT.0] = 8 * len[Graph::INPUT.0] / 3;
                }
                let (slot_of, slot_len) = plan_slots(io, &last, &len);
                let peak = check_slots(io, &last, &len, &slot_of, &slot_len);
                // A slot's successive users are ordered by the data itself.
                let ancestry = Ancestry::new(io, len.len());
                let mut users: Vec<Vec<usize>> = vec![Vec::new(); slot_len.len()];
                for (i, (inputs, out)) in io.iter().enumerate() {
                    let s = slot_of[out.0];
                    for &u in &users[s] {
                        assert!(
                            ancestry.precedes(u, i),
                            "{preset} {what}: step {i} reuses slot {s} of step {u}, not its ancestor"
                        );
                    }
                    users[s] = vec![i];
                    for v in inputs {
                        users[slot_of[v.0]].push(i);
                    }
                }
                let s = Schedule::new(io, &slot_of);
                check_ordered(io, &slot_of, &s);
                let path = s.critical_path();
                let data = data_depth(io, len.len());
                let arena: usize = slot_len.iter().sum();
                println!(
                    "{preset} {what}: {} steps on {} streams, critical path {path} (the data's \
                     own: {data}); arena {arena} elements per image (live at once at most: {peak})",
                    io.len(),
                    s.stream.iter().max().map_or(0, |m| m + 1),
                );
                assert_eq!(
                    path, data,
                    "{preset} {what}: streams or slots lengthen the chain"
                );
                assert!(
                    arena <= 2 * peak,
                    "{preset} {what}: arena {arena} for {peak} live"
                );
                // A small multiple of the largest activation (the stem's 64 channels at
                // half the input's resolution).
                let largest = 64 * graph.config.input_height * graph.config.input_width / 4;
                assert!(arena < 8 * largest, "{preset} {what}: arena {arena}");
            }
        }
    }
}
