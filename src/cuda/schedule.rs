//! Running HRNet's steps concurrently, and where their values live.
//!
//! Memory: every value has an offset in one arena, and two values share memory only if
//! every step that writes or reads the one comes before the writer of the other, in
//! launch order and in depth (the longest chain of steps through the data that ends at a
//! step), or if the writer of the other reads the one only element for element where it
//! writes, as a residual is read, and is its last user: a block's sum is then written
//! over its input. The writer then waits for those steps; as each such wait ends at a
//! step deeper than where it starts, no step's depth changes, and reusing memory never
//! lengthens the longest chain. Placed largest first, the tensor-core program's arena is
//! the most elements live at once (W32 256×192's: 1.18 M per image, in layer1's
//! Bottlenecks; W48 384×288's 2.65 M), where the same plan without writing in place took
//! 1.77 M and arena slots, each as long as the longest value it held, 2.99 M.
//!
//! Streams: each step goes to the stream that delays it least (below), and waits, through
//! events, for exactly the steps of other streams it depends on: the producers of its
//! inputs (read after write) and the earlier readers and writers of the memory it
//! overwrites (write after read, write after write). Steps of one
//! stream are ordered by the stream itself. Captured into a CUDA graph, this is a graph
//! whose longest chain is the data's own: on W32 98 of the 290 tensor-core steps (102 of
//! the direct program's 316), where one stream per branch gave 123 (140): a branch's side
//! steps, such as the 1×1 convolutions an exchange unit upsamples, queued behind its main
//! chain.
//!
//! Launches: consecutive steps of one depth may be one launch (`launches`; the
//! tensor-core program's grouped kernels, when `TcTuning::grouped` asks): W32's 290 steps
//! in 121 launches, the chain still 98.

use crate::graph::{Graph, ValueId};

/// The streams steps are spread over. HRNet has four branches, each with side steps
/// beside its main chain, and an unfused exchange unit has up to 12 steps side by side:
/// with 16 every preset's chain is the data's own (with 8, the direct program's W32 chain
/// is one step longer).
pub const STREAMS: usize = 16;

/// The most steps one launch runs (kernels/conv_tc.cu's grouped kernels, `TC_GROUP`).
pub(crate) const GROUP: usize = 4;

/// A step as (inputs, output).
pub(crate) type StepIo = (Vec<ValueId>, ValueId);

/// Steps in execution order.
pub(crate) type Steps = [StepIo];

/// Each step's depth: the longest chain of steps through the data that ends at it, every
/// step from `barrier` on (0: none) after every step before it.
fn depths(steps: &Steps, values: usize, barrier: usize) -> Vec<usize> {
    let mut depth = vec![0usize; steps.len()];
    let mut producer: Vec<Option<usize>> = vec![None; values];
    // The least depth of the steps from `barrier` on.
    let mut behind = 0;
    for (i, (inputs, out)) in steps.iter().enumerate() {
        if i == barrier && barrier > 0 {
            behind = depth[..barrier].iter().max().map_or(0, |d| d + 1);
        }
        depth[i] = inputs
            .iter()
            .filter_map(|v| producer[v.0])
            .map(|p| depth[p] + 1)
            .fold(behind, usize::max);
        producer[out.0] = Some(i);
    }
    depth
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
/// the last step: kept to the end, as the heatmaps are) and its per-image length. Value
/// `b` may take memory value `a` had only if `a` is not kept and every step that writes or
/// reads `a` comes before the step that writes `b`, in launch order and in depth
/// ([`depths`]; from step `barrier` on, 0 for none, every step follows every step before
/// it). The schedule makes the writer wait for those steps; each such wait ends deeper
/// than it starts, so no step's depth changes and the longest chain stays the data's own.
/// Values are placed largest first, each at the lowest offset (a multiple of [`ALIGN`])
/// where it overlaps none of the values already placed that it may not share with. The
/// input (`Graph::INPUT`) is written before every step.
///
/// In place: `over[i]` lists the inputs that step `i` reads only element for element
/// where it writes its output (the same index, by the same thread, before the write), as
/// a residual or an exchange unit's identity is read. Its output is put exactly on one of
/// them when it has the output's length, is not kept, every other step that touches it
/// comes before step `i` as above, and that memory is free of the values the output may
/// not share with. So a block's sum overwrites its input, which nothing needs afterwards.
///
/// Values of length 0 live elsewhere (the chunked front's, [`Chunked`]): they get no
/// place.
pub(crate) fn plan_arena(
    steps: &Steps,
    over: &[Vec<ValueId>],
    last: &[usize],
    value_len: &[usize],
    barrier: usize,
) -> ArenaPlan {
    let values = value_len.len();
    let depth = depths(steps, values, barrier);
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
    // Whether value `a` is not kept and every user of it but `except` comes before step
    // `w`.
    let done_before = |a: usize, w: usize, except: Option<usize>| {
        last[a] < steps.len()
            && users[a]
                .iter()
                .flatten()
                .all(|&u| Some(u) == except || u < w && depth[u] < depth[w])
    };
    // Whether `b` may take memory that `a` had.
    let after = |a: usize, b: usize| writer[b].is_some_and(|w| done_before(a, w, None));
    let mut order: Vec<usize> = (0..values)
        .filter(|&v| users[v].is_some() && value_len[v] > 0)
        .collect();
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
            && done_before(a, w, Some(w))
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

/// The launches of `steps`: for each step, how many steps one launch runs from it on (0
/// for a step launched with an earlier one). A launch runs consecutive steps of one
/// depth ([`depths`], with `barrier`; such steps neither pass a value nor, as
/// [`plan_arena`] places them, share memory) that `joins` accepts with the first, at
/// most [`GROUP`], none across `barrier`. Without `joins`, one step each.
fn launches(
    steps: &Steps,
    values: usize,
    barrier: usize,
    joins: Option<&dyn Fn(usize, usize) -> bool>,
) -> Vec<usize> {
    let Some(joins) = joins else {
        return vec![1; steps.len()];
    };
    let depth = depths(steps, values, barrier);
    let mut group = vec![0; steps.len()];
    let mut i = 0;
    while i < steps.len() {
        let end = (i + 1..steps.len().min(i + GROUP))
            .find(|&j| depth[j] != depth[i] || j == barrier || !joins(i, j))
            .unwrap_or(steps.len().min(i + GROUP));
        group[i] = end - i;
        i = end;
    }
    group
}

/// Where each launch runs and what it waits for.
#[derive(Clone, Debug)]
pub(crate) struct Schedule {
    /// For each step, how many steps its launch runs ([`launches`]): at least 1 where a
    /// launch starts, 0 for the steps it runs after its first.
    pub(crate) group: Vec<usize>,
    /// The stream of each step (a launch's steps share it).
    pub(crate) stream: Vec<usize>,
    /// For the first step of each launch, the launches of other streams to wait for, by
    /// their first steps: at most one per stream, the latest (its stream runs the earlier
    /// ones before it). Empty for the other steps.
    pub(crate) waits: Vec<Vec<usize>>,
}

impl Schedule {
    /// Schedules `steps` whose values live where `arena` says, launched as `group` says
    /// ([`launches`]). Each launch goes to the stream that delays it least: the stream of
    /// one of its deepest dependencies that is still its stream's last launch (the chain
    /// goes on at no cost); else a stream whose last launch is no deeper than those
    /// dependencies (the deepest such, keeping shallower ones for later); else the
    /// shallowest. Depth: the longest chain of launches ending at a launch, stream order
    /// included. `streams` (1 to [`STREAMS`]): the most streams used; with fewer than the
    /// data needs, launches wait behind others of their stream and the chain grows (1:
    /// every launch after the one before it).
    pub(crate) fn new(steps: &Steps, arena: &ArenaPlan, streams: usize, group: Vec<usize>) -> Self {
        let streams = streams.clamp(1, STREAMS);
        let values = arena.len.len();
        // Per value: the values it shares memory with.
        let shares: Vec<Vec<usize>> = (0..values)
            .map(|b| {
                (0..values)
                    .filter(|&a| a != b && arena.overlap(a, b))
                    .collect()
            })
            .collect();
        // Per value: the launch (by its first step) that wrote it, and those that wrote or
        // read it so far.
        let mut producer: Vec<Option<usize>> = vec![None; values];
        let mut touched: Vec<Vec<usize>> = vec![Vec::new(); values];
        let mut depth = vec![0usize; steps.len()];
        let mut stream = vec![0; steps.len()];
        let mut last_on = [None::<usize>; STREAMS];
        let mut waits = vec![Vec::new(); steps.len()];
        for i in (0..steps.len()).filter(|&i| group[i] > 0) {
            let unit = &steps[i..i + group[i]];
            let deps: Vec<usize> = unit
                .iter()
                .flat_map(|(inputs, out)| {
                    inputs.iter().filter_map(|v| producer[v.0]).chain(
                        shares[out.0]
                            .iter()
                            .flat_map(|&a| touched[a].iter().copied()),
                    )
                })
                .collect();
            let ready = deps.iter().map(|&d| depth[d]).max().unwrap_or(0);
            let tail = |k: usize| last_on[k].map_or(0, |l| depth[l]);
            let k = deps
                .iter()
                .copied()
                .find(|&d| depth[d] == ready && last_on[stream[d]] == Some(d))
                .map(|d| stream[d])
                .or_else(|| {
                    (0..streams)
                        .filter(|&k| tail(k) <= ready)
                        .max_by_key(|&k| tail(k))
                })
                .unwrap_or_else(|| (0..streams).min_by_key(|&k| tail(k)).unwrap_or(0));
            depth[i] = ready.max(tail(k)) + 1;
            let mut latest = [None; STREAMS];
            for d in deps {
                let j = stream[d];
                if j != k && latest[j].is_none_or(|l| l < d) {
                    latest[j] = Some(d);
                }
            }
            waits[i] = latest.iter().flatten().copied().collect();
            stream[i..i + group[i]].fill(k);
            last_on[k] = Some(i);
            for (inputs, out) in unit {
                for v in inputs {
                    touched[v.0].push(i);
                }
                touched[out.0].push(i);
                producer[out.0] = Some(i);
            }
        }
        Schedule {
            group,
            stream,
            waits,
        }
    }

    /// Launches on the longest chain of dependencies (stream order included): what bounds
    /// the latency of one forward when the branches overlap.
    pub(crate) fn critical_path(&self) -> usize {
        self.critical_path_from(0)
    }

    /// [`Schedule::critical_path`] of the steps from `start` on, those before it being
    /// behind a join of every stream (the rest of a chunked front).
    pub(crate) fn critical_path_from(&self, start: usize) -> usize {
        let mut depth = vec![0usize; self.stream.len()];
        let mut last_on = [None::<usize>; STREAMS];
        for i in (start..self.stream.len()).filter(|&i| self.group[i] > 0) {
            let before = last_on[self.stream[i]]
                .into_iter()
                .chain(self.waits[i].iter().copied().filter(|&w| w >= start))
                .map(|d| depth[d])
                .max()
                .unwrap_or(0);
            depth[i] = before + 1;
            last_on[self.stream[i]] = Some(i);
        }
        depth.into_iter().max().unwrap_or(0)
    }
}

/// Which steps may share a launch (see [`launches`]); `None`: none.
pub(crate) type Joins<'a> = Option<&'a dyn Fn(usize, usize) -> bool>;

/// An arena plan and the schedule of the steps on it.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub(crate) plan: ArenaPlan,
    pub(crate) schedule: Schedule,
    /// Whether a step of another stream waits for step i (it records an event).
    pub(crate) waited_on: Vec<bool>,
}

impl Layout {
    /// The arena plan of `steps` with the in-place writes `over` allows (see
    /// [`plan_arena`], with its `barrier`), and the schedule on it over at most `streams`
    /// streams, steps of one depth that `joins` accepts launched together ([`launches`]).
    pub(crate) fn new(
        steps: &Steps,
        over: &[Vec<ValueId>],
        last: &[usize],
        value_len: &[usize],
        barrier: usize,
        (streams, joins): (usize, Joins<'_>),
    ) -> Self {
        let plan = plan_arena(steps, over, last, value_len, barrier);
        let group = launches(steps, value_len.len(), barrier, joins);
        let schedule = Schedule::new(steps, &plan, streams, group);
        let mut waited_on = vec![false; steps.len()];
        for &w in schedule.waits.iter().flatten() {
            waited_on[w] = true;
        }
        Layout {
            plan,
            schedule,
            waited_on,
        }
    }
}

/// The front of the network (its first steps: for HRNet the stem, layer1 and
/// transition1) run over chunks of images, every stream joined between chunks. The front
/// holds the most per image (W32 256×192's tensor-core program: 1.18 M elements, against
/// 387 K for any later step), so a large batch then needs a chunk's front, not the whole
/// batch's. Two arenas:
/// - `inner`: the values only the front uses, for `chunk` images, and the front's
///   schedule (steps `0..front`);
/// - `outer`: every other value (the input, what the front leaves to the rest, the
///   rest's own) for the whole batch, where a chunk finds its images at its offset. Its
///   steps before `front` stand for the front and are not launched: each reads the input
///   and writes the value the real step writes (nothing, for the front's own values, of
///   length 0 here). Every later step follows all of them (the streams are joined after
///   the last chunk), so the rest may take the input's memory.
///
/// An input stored padded (the tensor-core program's image: 8 channels for 3) is kept
/// compact in `outer` and, when `pads_input`, padded one chunk at a time into its place
/// in `inner`, written before the chunk's first step (kernels/input.cu, `input_pad`).
#[derive(Clone, Debug)]
pub(crate) struct Chunked {
    /// Steps `0..front` run once per chunk.
    pub(crate) front: usize,
    /// Images per chunk: the most; the last chunk holds what is left.
    pub(crate) chunk: usize,
    /// Whether the input is held compact in `outer` and padded per chunk in `inner`.
    pub(crate) pads_input: bool,
    pub(crate) inner: Layout,
    pub(crate) outer: Layout,
}

impl Chunked {
    /// The chunked layouts of `steps` (as [`plan_arena`] takes them) for chunks of
    /// `chunk` images, at the cut [`front_cut`] chooses; `None` where chunking saves
    /// nothing (or `chunk` is 0). `input_len`: the input's elements per image held
    /// compact, if fewer than it is stored with (`value_len`) and only the front reads it.
    /// Both layouts are scheduled over at most `streams` streams, steps launched together
    /// where `joins` says (see [`Layout::new`]).
    pub(crate) fn new(
        steps: &Steps,
        over: &[Vec<ValueId>],
        last: &[usize],
        value_len: &[usize],
        (input_len, chunk): (usize, usize),
        streams: (usize, Joins<'_>),
    ) -> Option<Self> {
        if chunk == 0 {
            return None;
        }
        let (front, own) = front_cut(steps, over, last, value_len, input_len, chunk)?;
        let pads_input = own(Graph::INPUT.0);
        let (inner_len, mut outer_len): (Vec<usize>, Vec<usize>) = value_len
            .iter()
            .enumerate()
            .map(|(v, &l)| if own(v) { (l, 0) } else { (0, l) })
            .unzip();
        if pads_input {
            outer_len[Graph::INPUT.0] = input_len;
        }
        let inner = Layout::new(
            &steps[..front],
            &over[..front],
            last,
            &inner_len,
            0,
            streams,
        );
        let (outer_steps, outer_over) = Self::outer_steps(steps, over, front);
        let outer = Layout::new(&outer_steps, &outer_over, last, &outer_len, front, streams);
        Some(Chunked {
            front,
            chunk,
            pads_input,
            inner,
            outer,
        })
    }

    /// The steps the outer layout is planned for, with their in-place inputs: before
    /// `front`, each reads the input and writes what the real step writes, in place of
    /// nothing.
    fn outer_steps(
        steps: &Steps,
        over: &[Vec<ValueId>],
        front: usize,
    ) -> (Vec<StepIo>, Vec<Vec<ValueId>>) {
        steps
            .iter()
            .zip(over)
            .enumerate()
            .map(|(i, ((inputs, out), o))| {
                if i < front {
                    ((vec![Graph::INPUT], *out), Vec::new())
                } else {
                    ((inputs.clone(), *out), o.clone())
                }
            })
            .unzip()
    }

    /// Elements (both arenas) for a batch of `n`.
    pub(crate) fn elements(&self, n: usize) -> Option<usize> {
        n.checked_mul(self.outer.plan.total)?
            .checked_add(self.chunk.checked_mul(self.inner.plan.total)?)
    }
}

/// Elements live per image at each step: the values `keep` accepts (of length > 0) from
/// the step that writes them (`born`) to their last use (`until`), an output written over
/// an input it reads for the last time counted once.
fn live_sums(
    steps: &Steps,
    over: &[Vec<ValueId>],
    born: &[usize],
    until: &[usize],
    value_len: &[usize],
    keep: &dyn Fn(usize) -> bool,
) -> Vec<usize> {
    let keep = |v: usize| value_len[v] > 0 && keep(v);
    steps
        .iter()
        .enumerate()
        .map(|(i, (inputs, out))| {
            let sum: usize = (0..value_len.len())
                .filter(|&v| born[v] <= i && i <= until[v] && keep(v))
                .map(|v| value_len[v])
                .sum();
            let once = over[i]
                .iter()
                .map(|a| a.0)
                .find(|&a| {
                    value_len[a] == value_len[out.0]
                        && until[a] == i
                        && inputs.iter().filter(|x| x.0 == a).count() == 1
                })
                .filter(|&a| keep(a) && keep(out.0))
                .map_or(0, |a| value_len[a]);
            sum - once
        })
        .collect()
}

/// Where the chunked front ends: the shortest prefix of the steps after which no step
/// holds more than two thirds of the most any step holds per image (for HRNet the stem,
/// layer1 and transition1), if running it over chunks of `chunk` images holds fewer
/// elements at a batch of eight chunks than the whole network at once does; else `None`.
/// Returns the cut and which values are the front's own: those no later step uses, and
/// the input, when it is held compact (`input_len` elements per image, fewer than
/// `value_len`'s) and padded per chunk, which only pays where only the front reads it.
/// A chunk holds the most the front's own values hold at once; the batch holds the more of
/// what it keeps while the front runs (the input and what the front leaves to the rest) and
/// the most any later step holds. Ending the front later would save a little more memory
/// (the deeper stages hold less still) but run more of the network at a chunk's size,
/// where its launches no longer fill the GPU. Live sums per image, an in-place output and
/// its input counted once: the lower bound [`plan_arena`] meets within a few percent.
fn front_cut<'a>(
    steps: &Steps,
    over: &[Vec<ValueId>],
    last: &'a [usize],
    value_len: &[usize],
    input_len: usize,
    chunk: usize,
) -> Option<(usize, impl Fn(usize) -> bool + 'a)> {
    let values = value_len.len();
    let mut born = vec![usize::MAX; values];
    born[Graph::INPUT.0] = 0;
    for (i, (_, out)) in steps.iter().enumerate() {
        born[out.0] = i;
    }
    // after[i]: the most live at step `i` or later.
    let all = live_sums(steps, over, &born, last, value_len, &|_| true);
    let mut after = vec![0; steps.len() + 1];
    for i in (0..steps.len()).rev() {
        after[i] = after[i + 1].max(all[i]);
    }
    let f = (1..steps.len()).find(|&f| 3 * after[f] <= 2 * after[0])?;
    let input = Graph::INPUT.0;
    let pads = input_len < value_len[input];
    let own = move |v: usize| (v != input || pads) && last[v] < f;
    let front = live_sums(&steps[..f], over, &born, last, value_len, &own)
        .into_iter()
        .max()
        .unwrap_or(0);
    let held: usize = (0..values)
        .filter(|&v| born[v] < f && !own(v))
        .map(|v| value_len[v])
        .sum::<usize>()
        + if own(input) { input_len } else { 0 };
    let batch = 8 * chunk;
    let chunked = batch
        .checked_mul(held.max(after[f]))?
        .checked_add(chunk.checked_mul(front)?)?;
    (chunked < batch.checked_mul(after[0])?).then_some((f, own))
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
    /// is ordered: the later one is after the earlier by stream order and the waits; no
    /// two steps of one launch do either. Only the steps of `run` are launched; those
    /// before it are behind a join of every stream (waits on them are not made).
    fn check_ordered(
        io: &[(Vec<ValueId>, ValueId)],
        arena: &ArenaPlan,
        s: &Schedule,
        run: std::ops::Range<usize>,
    ) {
        // The first step of each step's launch.
        let mut first: Vec<usize> = (0..io.len()).collect();
        for i in run.clone().filter(|&i| s.group[i] > 0) {
            let rest = i + 1..i + s.group[i];
            assert!(s.group[i] <= GROUP && rest.end <= run.end);
            assert!(
                rest.clone()
                    .all(|j| s.group[j] == 0 && s.waits[j].is_empty())
            );
            assert!(rest.clone().all(|j| s.stream[j] == s.stream[i]));
            first[rest].fill(i);
        }
        // clock[i][k]: the latest launch of stream k that launch i is known to follow.
        let mut clock: Vec<[Option<usize>; STREAMS]> = vec![[None; STREAMS]; io.len()];
        let mut last_on = [None::<usize>; STREAMS];
        for i in run.clone().filter(|&i| s.group[i] > 0) {
            let mut c = [None; STREAMS];
            let merge = |c: &mut [Option<usize>; STREAMS], o: &[Option<usize>; STREAMS]| {
                for k in 0..STREAMS {
                    c[k] = c[k].max(o[k]);
                }
            };
            for d in last_on[s.stream[i]]
                .into_iter()
                .chain(s.waits[i].iter().copied().filter(|&w| w >= run.start))
            {
                assert!(
                    s.group[d] > 0,
                    "step {i} waits on step {d}, which starts no launch"
                );
                let cd = clock[d];
                merge(&mut c, &cd);
                c[s.stream[d]] = c[s.stream[d]].max(Some(d));
            }
            clock[i] = c;
            last_on[s.stream[i]] = Some(i);
        }
        let shared = |x: ValueId, y: ValueId| x == y || arena.overlap(x.0, y.0);
        for b in run.clone() {
            let (reads_b, write_b) = &io[b];
            let fb = first[b];
            for a in run.start..b {
                let (reads_a, write_a) = &io[a];
                let conflict = shared(*write_a, *write_b)
                    || reads_b.iter().any(|&r| shared(r, *write_a))
                    || reads_a.iter().any(|&r| shared(r, *write_b));
                let fa = first[a];
                assert!(
                    !(conflict && fa == fb),
                    "steps {a} and {b} of one launch share memory or a value"
                );
                if conflict && s.stream[a] != s.stream[b] {
                    assert!(
                        clock[fb][s.stream[a]] >= Some(fa),
                        "step {b} (stream {}) may run before step {a} (stream {})",
                        s.stream[b],
                        s.stream[a]
                    );
                }
            }
        }
    }

    /// The longest chain of steps through the data alone (no stream order, no shared memory).
    fn data_depth(io: &Steps, values: usize, start: usize) -> usize {
        let mut depth = vec![0usize; io.len()];
        let mut producer: Vec<Option<usize>> = vec![None; values];
        for (i, (inputs, out)) in io.iter().enumerate().skip(start) {
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
    fn check_arena(
        io: &Steps,
        over: &[Vec<ValueId>],
        last: &[usize],
        arena: &ArenaPlan,
        barrier: usize,
    ) -> usize {
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
        let depth = depths(io, values, barrier);
        // Whether step `u` comes before step `b` in launch order and in depth.
        let before = |u: usize, b: usize| u < b && depth[u] < depth[b];
        // Whether step `b` may write its output exactly over value `a`.
        let may_overwrite = |a: usize, b: usize| {
            let (inputs, out) = &io[b];
            over[b].contains(&ValueId(a))
                && inputs.iter().filter(|v| v.0 == a).count() == 1
                && arena.len[a] == arena.len[out.0]
                && last[a] < io.len()
                && users[a].iter().all(|&u| u == b || before(u, b))
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
                    on(a, b) || last[a] < io.len() && users[a].iter().all(|&u| before(u, b)),
                    "step {b} writes value {} over value {a}, whose users do not all come \
                     before it",
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

    /// Each value's last use in `io`: its last reader's step (its writer's, if nothing
    /// reads it), or `last`'s, kept to the end.
    fn last_reads(io: &Steps, last: &[usize]) -> Vec<usize> {
        let mut reads: Vec<usize> = last
            .iter()
            .map(|&l| if l >= io.len() { l } else { 0 })
            .collect();
        for (i, (inputs, out)) in io.iter().enumerate() {
            for v in inputs.iter().chain([out]) {
                if reads[v.0] < io.len() {
                    reads[v.0] = reads[v.0].max(i);
                }
            }
        }
        reads
    }

    /// The front in chunks of 8: both arenas checked as [`check_arena`] and
    /// [`check_ordered`] check one (the rest's steps behind a join of every stream, its
    /// chain the data's own), each value a step touches in exactly one of them, the
    /// rest's in the outer one, but the input in both where it is padded per chunk (held
    /// compact in `input_len` elements per image); the front's arena within 5% of its live peak (and
    /// `beside`, as the whole arena), the outer one within `slack` percent; at batch 64,
    /// the two together under three quarters of the whole batch's arena (`whole` elements
    /// per image). Returns their elements at batch 64.
    #[allow(clippy::too_many_arguments)]
    fn check_chunked(
        what: &str,
        io: &Steps,
        over: &[Vec<ValueId>],
        last: &[usize],
        len: &[usize],
        input_len: usize,
        whole: usize,
        beside: usize,
        slack: usize,
    ) -> usize {
        let chunk = 8;
        let c = Chunked::new(io, over, last, len, (input_len, chunk), (STREAMS, None))
            .expect("chunking the front pays");
        let input = Graph::INPUT;
        let padded = input_len < len[input.0];
        assert_eq!(c.pads_input, padded, "{what}: the input padded per chunk");
        if padded {
            assert_eq!(
                c.inner.plan.region(input).map(|r| r.len()),
                Some(len[input.0])
            );
            assert_eq!(c.outer.plan.region(input).map(|r| r.len()), Some(input_len));
        }
        let f = c.front;
        let inner_peak = check_arena(&io[..f], &over[..f], last, &c.inner.plan, 0);
        check_ordered(&io[..f], &c.inner.plan, &c.inner.schedule, 0..f);
        let (outer_io, outer_over) = Chunked::outer_steps(io, over, f);
        let outer_last = last_reads(&outer_io, last);
        let outer_peak = check_arena(&outer_io, &outer_over, &outer_last, &c.outer.plan, f);
        check_ordered(&outer_io, &c.outer.plan, &c.outer.schedule, f..io.len());
        let path = c.outer.schedule.critical_path_from(f);
        let data = data_depth(io, len.len(), f);
        assert_eq!(path, data, "{what}: the rest's chain");
        for (i, (inputs, out)) in io.iter().enumerate() {
            for v in inputs.iter().chain([out]) {
                let (inner, outer) = (c.inner.plan.region(*v), c.outer.plan.region(*v));
                if padded && *v == input {
                    continue;
                }
                assert!(
                    inner.is_some() != outer.is_some() && (i < f || outer.is_some()),
                    "{what}: value {} of step {i} (front {f}): inner {inner:?}, outer {outer:?}",
                    v.0
                );
            }
        }
        let (inner, outer) = (c.inner.plan.total, c.outer.plan.total);
        let batch = 64;
        let chunked = c.elements(batch).unwrap();
        println!(
            "{what}: front of {f} steps in chunks of {chunk}: {inner} elements per image \
             (live at most {inner_peak}), the rest {outer} (live at most {outer_peak}); \
             batch {batch}: {chunked} elements, whole {}",
            batch * whole
        );
        assert!(
            inner <= inner_peak + inner_peak / 20 + beside,
            "{what}: front arena"
        );
        assert!(
            outer <= outer_peak + outer_peak * slack / 100,
            "{what}: outer arena"
        );
        assert!(
            4 * chunked < 3 * batch * whole,
            "{what}: chunked {chunked}, whole {}",
            batch * whole
        );
        chunked
    }

    #[test]
    fn values_never_alias_and_concurrent_steps_wait_only_on_the_data() {
        for preset in ["w32-256x192", "w48-384x288", "w32-256x256-mpii"] {
            let graph = Graph::new(&HrnetConfig::preset(preset).unwrap()).unwrap();
            let mut len: Vec<usize> = graph.values.iter().map(Chw::len).collect();
            let input_len = len[Graph::INPUT.0];
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
                let arena = plan_arena(io, over, &last, &len, 0);
                let peak = check_arena(io, over, &last, &arena, 0);
                let one = vec![1; io.len()];
                let s = Schedule::new(io, &arena, STREAMS, one.clone());
                check_ordered(io, &arena, &s, 0..io.len());
                // Fewer streams (`hrnet bench --streams`) still order every conflict; one
                // chains every step.
                for k in [1, 4] {
                    let fewer = Schedule::new(io, &arena, k, one.clone());
                    check_ordered(io, &arena, &fewer, 0..io.len());
                    assert!(fewer.stream.iter().all(|&j| j < k));
                    let path = fewer.critical_path();
                    if k == 1 {
                        assert_eq!(path, io.len(), "{preset} {what}: one stream");
                    }
                    println!("{preset} {what}: on {k} of the streams, critical path {path}");
                }
                let path = s.critical_path();
                let data = data_depth(io, len.len(), 0);
                if what == "fused" {
                    // Grouped launches (`TcTuning::grouped`): a module's four branch
                    // convolutions of one depth in one launch, the chain unchanged.
                    let joins = |a, b| plan.same_kernel(&graph, a, b);
                    let group = launches(io, len.len(), 0, Some(&joins));
                    let grouped = Schedule::new(io, &arena, STREAMS, group);
                    check_ordered(io, &arena, &grouped, 0..io.len());
                    let n = grouped.group.iter().filter(|&&g| g > 0).count();
                    println!(
                        "{preset} {what}: grouped, {n} launches, critical path {}",
                        grouped.critical_path()
                    );
                    assert_eq!(grouped.critical_path(), data, "{preset}: grouped chain");
                    assert!(2 * n < 3 * io.len(), "{preset}: {n} grouped launches");
                    let with_chunks = Chunked::new(
                        io,
                        over,
                        &last,
                        &len,
                        (input_len, 8),
                        (STREAMS, Some(&joins)),
                    )
                    .expect("chunking the front pays");
                    let f = with_chunks.front;
                    let (outer_io, _) = Chunked::outer_steps(io, over, f);
                    check_ordered(
                        &outer_io,
                        &with_chunks.outer.plan,
                        &with_chunks.outer.schedule,
                        f..io.len(),
                    );
                    check_ordered(
                        &io[..f],
                        &with_chunks.inner.plan,
                        &with_chunks.inner.schedule,
                        0..f,
                    );
                    assert_eq!(
                        with_chunks.outer.schedule.critical_path_from(f),
                        data_depth(io, len.len(), f)
                    );
                }
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
                // peak (the peak exactly for all three), its block sums written over their
                // inputs. The direct program runs layer1's shortcut conv beside the first
                // block's conv1 and conv2 (at the same depth), so conv2 may not take the
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
                // The rest's arena: as the input and the front's outputs sit, and with
                // the unfused exchange units' many steps side by side, some memory
                // cannot be shared without lengthening the chain (direct, W32: 36% over
                // the live peak; fused, W32: 23%, the rest's own values packed around
                // stage 4 once the compact input no longer sets the arena's length).
                let slack = if what == "direct" { 40 } else { 25 };
                let name = format!("{preset} {what}");
                let chunked = check_chunked(
                    &name, io, over, &last, &len, input_len, arena, beside, slack,
                );
                if preset == "w32-256x192" && what == "fused" {
                    // The memory target's configuration: at batch 64, 40.0 M elements where
                    // the whole batch at once takes 75.5 M (44.0 M with the input padded
                    // for the whole batch).
                    assert!(100 * chunked <= 54 * 64 * arena, "{name}: {chunked}");
                }
            }
        }
    }
}
