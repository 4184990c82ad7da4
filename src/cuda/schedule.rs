//! Running HRNet's steps concurrently, and where their values live.
//!
//! Memory: every value has an offset in one arena, and two values share memory only if
//! every step that writes or reads the one is already ordered before the writer of the
//! other by the data itself (it is an ancestor of the writer: the writer reads, directly
//! or not, what each of them produced), or if the writer of the other reads the one only
//! element for element where it writes, as a residual is read, and is its last user: a
//! block's sum is then written over its input. Reusing memory so never makes one step
//! wait for another that it does not already wait for. Placed largest first, the
//! tensor-core program's arena is the most elements live at once (W32 256×192's: 1.18 M
//! per image, in layer1's Bottlenecks; 4% over it for W48 384×288), where the same plan
//! without writing in place took 1.77 M and arena slots, each as long as the longest
//! value it held, 2.99 M.
//!
//! Streams: each step goes to the stream that delays it least (below), and waits, through
//! events, for exactly the steps of other streams it depends on: the producers of its
//! inputs (read after write) and the earlier readers and writers of the memory it
//! overwrites (write after read, write after write; already ancestors, by the arena plan,
//! but waited for all the same, so that the schedule is right for any plan). Steps of one
//! stream are ordered by the stream itself. Captured into a CUDA graph, this is a graph
//! whose longest chain is the data's own: on W32 98 of the 290 tensor-core steps (102 of
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

/// The multiple of elements every value's offset in the arena is: 256 bytes in f16, the
/// alignment of a CUDA allocation, and a multiple of every vector the kernels move.
pub(crate) const ALIGN: usize = 128;

/// Where each value lives in the arena, in elements per image. At a batch capacity `c`
/// (the batch the arena was allocated for), value `v` holds `n ≤ c` images at
/// `offset[v]·c .. offset[v]·c + len[v]·n`, so one plan serves every batch up to `c`.
#[derive(Clone, Debug)]
pub(crate) struct ArenaPlan {
    /// Each value's offset; `None` for values no step writes (convolutions folded into a
    /// fused step).
    pub(crate) offset: Vec<Option<usize>>,
    /// Each value's length.
    pub(crate) len: Vec<usize>,
    /// The arena's length.
    pub(crate) total: usize,
}

impl ArenaPlan {
    /// Value `v`'s elements per image, if it has any.
    pub(crate) fn region(&self, v: ValueId) -> Option<std::ops::Range<usize>> {
        self.offset[v.0].map(|o| o..o + self.len[v.0])
    }

    /// Whether values `a` and `b` share any memory.
    fn overlap(&self, a: usize, b: usize) -> bool {
        match (self.region(ValueId(a)), self.region(ValueId(b))) {
            (Some(x), Some(y)) => x.start < y.end && y.start < x.end,
            _ => false,
        }
    }
}

/// Places every value in one arena, given the steps, each value's last reader (at or past
/// the last step: kept to the end, as the heatmaps are) and its per-image length. Two
/// values may share memory only if every step that writes or reads the one precedes,
/// through the data, the step that writes the other (is its ancestor), so that reusing
/// memory never makes one step wait for another it does not already wait for. Values are
/// placed largest first, each at the lowest offset (a multiple of [`ALIGN`]) where it
/// overlaps none of the values already placed that it may not share with. The input
/// (`Graph::INPUT`) is written before every step.
///
/// In place: `over[i]` lists the inputs that step `i` reads only element for element
/// where it writes its output (the same index, by the same thread, before the write), as
/// a residual or an exchange unit's identity is read. Its output is put exactly on one of
/// them when it has the output's length, is not kept, every other step that touches it
/// precedes step `i`, and that memory is free of the values the output may not share
/// with. So a block's sum overwrites its input, which nothing needs afterwards.
pub(crate) fn plan_arena(
    steps: &Steps,
    over: &[Vec<ValueId>],
    last: &[usize],
    value_len: &[usize],
) -> ArenaPlan {
    let values = value_len.len();
    let ancestry = Ancestry::new(steps, values);
    // Per value: the steps that write or read it (`None` for values that are not stored),
    // and the step that writes it.
    let mut users: Vec<Option<Vec<usize>>> = vec![None; values];
    let mut writer: Vec<Option<usize>> = vec![None; values];
    users[Graph::INPUT.0] = Some(Vec::new());
    for (i, (inputs, out)) in steps.iter().enumerate() {
        users[out.0].get_or_insert_with(Vec::new).push(i);
        writer[out.0] = Some(i);
        for v in inputs {
            users[v.0].get_or_insert_with(Vec::new).push(i);
        }
    }
    // Whether `b` may take memory that `a` had: `a` is not kept to the end, `b` has a
    // writing step, and every user of `a` is an ancestor of it.
    let after = |a: usize, b: usize| {
        let (Some(ua), Some(wb)) = (&users[a], writer[b]) else {
            return false;
        };
        last[a] < steps.len() && ua.iter().all(|&u| ancestry.precedes(u, wb))
    };
    let mut order: Vec<usize> = (0..values).filter(|&v| users[v].is_some()).collect();
    // Largest first; among equals, the earlier written first (the input before all).
    order.sort_by_key(|&v| {
        (
            std::cmp::Reverse(value_len[v]),
            writer[v].map_or(0, |w| w + 1),
        )
    });
    // Whether step `w` may write value `b` exactly over its input `a` (which it reads
    // once, not also as a convolution's source).
    let in_place = |a: usize, b: usize, w: usize| {
        value_len[a] == value_len[b]
            && steps[w].0.iter().filter(|x| x.0 == a).count() == 1
            && last[a] < steps.len()
            && users[a]
                .iter()
                .flatten()
                .all(|&u| u == w || ancestry.precedes(u, w))
    };
    let mut offset: Vec<Option<usize>> = vec![None; values];
    // The values placed so far, with their offsets.
    let mut placed: Vec<(usize, usize)> = Vec::new();
    let mut total = 0;
    for v in order {
        let need = value_len[v].div_ceil(ALIGN) * ALIGN;
        // The memory of the placed values `v` may not share with, by offset.
        let mut taken: Vec<(usize, usize, usize)> = placed
            .iter()
            .filter(|&&(p, _)| !after(p, v) && !after(v, p))
            .map(|&(p, start)| (start, value_len[p], p))
            .collect();
        taken.sort_unstable();
        // Free of all taken values but `a`, at `a`'s offset.
        let free_on = |a: usize| {
            let at = offset[a]?;
            let clear = taken
                .iter()
                .all(|&(start, len, p)| p == a || start + len <= at || at + need <= start);
            clear.then_some(at)
        };
        let on_input = writer[v].and_then(|w| {
            over[w]
                .iter()
                .filter(|a| in_place(a.0, v, w))
                .find_map(|a| free_on(a.0))
        });
        let at = on_input.unwrap_or_else(|| {
            let mut at = 0;
            for &(start, len, _) in &taken {
                if start >= at + need {
                    break;
                }
                at = at.max((start + len).div_ceil(ALIGN) * ALIGN);
            }
            at
        });
        offset[v] = Some(at);
        total = total.max(at + need);
        placed.push((v, at));
    }
    ArenaPlan {
        offset,
        len: value_len.to_vec(),
        total,
    }
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
    /// Schedules `steps` whose values live where `arena` says. Each step goes to the stream
    /// that delays it least: the stream of one of its deepest dependencies that is still its
    /// stream's last step (the chain goes on at no cost); else a stream whose last step is
    /// no deeper than those dependencies (the deepest such, keeping shallower ones for
    /// later); else the shallowest. Depth: the longest chain of steps ending at a step, stream
    /// order included.
    pub(crate) fn new(steps: &Steps, arena: &ArenaPlan) -> Self {
        let values = arena.len.len();
        // Per value: the values it shares memory with.
        let shares: Vec<Vec<usize>> = (0..values)
            .map(|b| {
                (0..values)
                    .filter(|&a| a != b && arena.overlap(a, b))
                    .collect()
            })
            .collect();
        let mut producer: Vec<Option<usize>> = vec![None; values];
        // Per value: the steps that wrote or read it so far.
        let mut touched: Vec<Vec<usize>> = vec![Vec::new(); values];
        let mut depth = vec![0usize; steps.len()];
        let mut stream = Vec::with_capacity(steps.len());
        let mut last_on = [None::<usize>; STREAMS];
        let mut waits = Vec::with_capacity(steps.len());
        for (i, (inputs, out)) in steps.iter().enumerate() {
            let deps: Vec<usize> = inputs
                .iter()
                .filter_map(|v| producer[v.0])
                .chain(
                    shares[out.0]
                        .iter()
                        .flat_map(|&a| touched[a].iter().copied()),
                )
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
                touched[v.0].push(i);
            }
            touched[out.0].push(i);
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
    use crate::cuda::engine::direct_overwritable;
    use crate::cuda::tc::overwritable;
    use crate::graph::Chw;
    use crate::graph::fused::FusedPlan;

    /// Every pair of steps that touch common memory (at least one writing) or pass a value
    /// is ordered: the later one is after the earlier by stream order and the waits.
    fn check_ordered(io: &[(Vec<ValueId>, ValueId)], arena: &ArenaPlan, s: &Schedule) {
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
        let shared = |x: ValueId, y: ValueId| x == y || arena.overlap(x.0, y.0);
        for (b, clock_b) in clock.iter().enumerate() {
            let (reads_b, write_b) = &io[b];
            for a in 0..b {
                let (reads_a, write_a) = &io[a];
                let conflict = shared(*write_a, *write_b)
                    || reads_b.iter().any(|&r| shared(r, *write_a))
                    || reads_a.iter().any(|&r| shared(r, *write_b));
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

    /// The longest chain of steps through the data alone (no stream order, no shared memory).
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

    /// Checks that no two values alive at once share memory, but a step's output written
    /// exactly over one of its inputs that it may overwrite, that every value lies inside
    /// the arena and that two values share memory only where the data orders every other
    /// user of the one before the writer of the other; returns the most elements alive at
    /// once (per image), an in-place output and its input counted once wherever the rule
    /// allows it, which no plan can go below.
    fn check_arena(io: &Steps, over: &[Vec<ValueId>], last: &[usize], arena: &ArenaPlan) -> usize {
        let values = arena.len.len();
        let mut born = vec![usize::MAX; values];
        born[Graph::INPUT.0] = 0;
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); values];
        for (i, (inputs, out)) in io.iter().enumerate() {
            born[out.0] = i;
            users[out.0].push(i);
            for v in inputs {
                users[v.0].push(i);
            }
        }
        for v in 0..values {
            if let Some(r) = arena.region(ValueId(v)) {
                assert!(r.end <= arena.total, "value {v} ends past the arena");
                assert_eq!(r.start % ALIGN, 0, "value {v} is not aligned");
            }
        }
        let ancestry = Ancestry::new(io, values);
        // Whether step `b` may write its output exactly over value `a`.
        let may_overwrite = |a: usize, b: usize| {
            let (inputs, out) = &io[b];
            over[b].contains(&ValueId(a))
                && inputs.iter().filter(|v| v.0 == a).count() == 1
                && arena.len[a] == arena.len[out.0]
                && last[a] < io.len()
                && users[a].iter().all(|&u| u == b || ancestry.precedes(u, b))
        };
        // Step `b`'s output lies exactly on value `a`, which it may overwrite.
        let on = |a: usize, b: usize| {
            may_overwrite(a, b) && arena.region(ValueId(a)) == arena.region(io[b].1)
        };
        for (b, (_, out)) in io.iter().enumerate() {
            for a in (0..values).filter(|&a| a != out.0 && arena.overlap(a, out.0)) {
                if born[a] > b {
                    continue; // checked when `a` is written
                }
                assert!(
                    on(a, b)
                        || last[a] < io.len() && users[a].iter().all(|&u| ancestry.precedes(u, b)),
                    "step {b} writes value {} over value {a}, whose users are not all its \
                     ancestors",
                    out.0
                );
            }
        }
        let mut peak = 0;
        for (i, (_, out)) in io.iter().enumerate() {
            let live: Vec<usize> = (0..values)
                .filter(|&v| born[v] <= i && i <= last[v])
                .collect();
            for (k, &u) in live.iter().enumerate() {
                for &v in &live[k + 1..] {
                    let in_place = (v == out.0 && on(u, i)) || (u == out.0 && on(v, i));
                    assert!(
                        in_place || !arena.overlap(u, v),
                        "values {u} and {v} share memory at step {i}"
                    );
                }
            }
            let once = live
                .iter()
                .find(|&&a| may_overwrite(a, i))
                .map_or(0, |&a| arena.len[a]);
            peak = peak.max(live.iter().map(|&v| arena.len[v]).sum::<usize>() - once);
        }
        peak
    }

    #[test]
    fn values_never_alias_and_concurrent_steps_wait_only_on_the_data() {
        for preset in ["w32-256x192", "w48-384x288", "w32-256x256-mpii"] {
            let graph = Graph::new(&HrnetConfig::preset(preset).unwrap()).unwrap();
            let mut len: Vec<usize> = graph.values.iter().map(Chw::len).collect();
            let direct: Vec<_> = graph.ops.iter().map(|o| (o.inputs(), o.output())).collect();
            let direct_over: Vec<_> = graph.ops.iter().map(direct_overwritable).collect();
            let plan = FusedPlan::new(&graph);
            let fused: Vec<_> = plan
                .steps
                .iter()
                .map(|s| (s.inputs(), s.output()))
                .collect();
            let fused_over: Vec<_> = plan.steps.iter().map(|s| overwritable(s, &graph)).collect();
            for (what, io, over, last) in [
                ("direct", &direct, &direct_over, graph.last_uses()),
                ("fused", &fused, &fused_over, plan.last_uses(&graph)),
            ] {
                if what == "fused" {
                    // The tensor-core program stores the image with 8 channels.
                    len[Graph::INPUT.0] = 8 * len[Graph::INPUT.0] / 3;
                }
                let arena = plan_arena(io, over, &last, &len);
                let peak = check_arena(io, over, &last, &arena);
                let s = Schedule::new(io, &arena);
                check_ordered(io, &arena, &s);
                let path = s.critical_path();
                let data = data_depth(io, len.len());
                let arena = arena.total;
                println!(
                    "{preset} {what}: {} steps on {} streams, critical path {path} (the data's \
                     own: {data}); arena {arena} elements per image (live at once at most: {peak})",
                    io.len(),
                    s.stream.iter().max().map_or(0, |m| m + 1),
                );
                assert_eq!(
                    path, data,
                    "{preset} {what}: streams or memory reuse lengthen the chain"
                );
                // Placed largest first, the fused program's arena is within 5% of its live
                // peak (the peak exactly but for W48 384×288, 4% over), its block sums
                // written over their inputs. The direct program runs layer1's shortcut conv
                // beside the first block's conv1 and conv2, so conv2 may not take the
                // block input's memory (64 channels at a quarter of the resolution), which
                // the peak, counting values live in launch order, leaves out.
                let (h, w) = (graph.config.input_height, graph.config.input_width);
                let beside = if what == "direct" { 64 * h * w / 16 } else { 0 };
                assert!(
                    arena <= peak + peak / 20 + beside,
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
