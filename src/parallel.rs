//! Independent work on every core: a list split into contiguous shares, one scoped thread
//! each, the results in the list's order (so what runs in parallel gives the bits a
//! single thread gives).

use std::num::NonZeroUsize;

/// The threads to use unless told otherwise: as many as the process may run at once.
#[must_use]
pub fn available() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// `f` on every item, on at most `threads` threads (the calling one included), the
/// results in the items' order. A panic in `f` is resumed on the calling thread.
pub fn map<T: Send, R: Send>(items: Vec<T>, threads: usize, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.into_iter().map(f).collect();
    }
    let share = items.len().div_ceil(threads);
    let mut shares: Vec<Vec<T>> = Vec::with_capacity(threads);
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        shares.push(items.by_ref().take(share).collect());
    }
    let f = &f;
    std::thread::scope(|scope| {
        let mut shares = shares.into_iter();
        let first = shares.next().unwrap_or_default();
        let others: Vec<_> = shares
            .map(|s| scope.spawn(move || s.into_iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut out: Vec<R> = first.into_iter().map(f).collect();
        for h in others {
            match h.join() {
                Ok(r) => out.extend(r),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_order_of_the_items_for_any_thread_count() {
        for n in [0, 1, 2, 7, 64, 1000] {
            let items: Vec<usize> = (0..n).collect();
            let single: Vec<usize> = items.iter().map(|i| i * i + 1).collect();
            for threads in [0, 1, 2, 3, 8, 2000] {
                assert_eq!(
                    map(items.clone(), threads, |i| i * i + 1),
                    single,
                    "{n} {threads}"
                );
            }
        }
    }

    #[test]
    fn items_may_hold_mutable_borrows() {
        let mut out = vec![0u32; 10];
        let items: Vec<(usize, &mut [u32])> = out.chunks_mut(3).enumerate().collect();
        let done = map(items, 4, |(i, chunk)| {
            chunk.fill(i as u32 + 1);
            chunk.len()
        });
        assert_eq!(done, [3, 3, 3, 1]);
        assert_eq!(out, [1, 1, 1, 2, 2, 2, 3, 3, 3, 4]);
    }
}
