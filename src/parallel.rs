//! Work spread over the cores: how many there are, and running a list of jobs on them with the
//! results in order. Used by the operators (a window join's read-out) and the CLI (Parquet
//! columns encoded side by side).

/// The cores this process may use: at least one.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `f` of every item, on up to `threads` threads (each takes the next item not yet taken, so
/// unequal items still share the threads out), in the items' order. A thread that panics gives
/// `panicked()`; the first error (in the items' order) is returned.
pub(crate) fn on_threads<T: Send, R: Send, E: Send>(
    threads: usize,
    items: Vec<T>,
    f: impl Fn(T) -> Result<R, E> + Sync,
    panicked: impl Fn() -> E,
) -> Result<Vec<R>, E> {
    let threads = threads.min(items.len());
    if threads <= 1 {
        return items.into_iter().map(f).collect();
    }
    let slots: Vec<std::sync::Mutex<Option<T>>> = items
        .into_iter()
        .map(|item| std::sync::Mutex::new(Some(item)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let at = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(slot) = slots.get(at) else {
                return done;
            };
            // Each slot is taken once; a poisoned one only means another thread panicked.
            let item = slot.lock().map(|mut s| s.take()).ok().flatten();
            if let Some(item) = item {
                done.push((at, f(item)));
            }
        }
    };
    // Per thread, what it did (`None`: it panicked).
    let runs: Vec<Option<Vec<_>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads).map(|_| scope.spawn(work)).collect();
        handles.into_iter().map(|h| h.join().ok()).collect()
    });
    let mut out: Vec<Option<Result<R, E>>> = (0..slots.len()).map(|_| None).collect();
    for run in runs {
        for (at, r) in run.ok_or_else(&panicked)? {
            out[at] = Some(r);
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(panicked())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::on_threads;

    /// Results in the items' order however the threads share them out, the first error in that
    /// order, and a panicking thread an error, not a panic.
    #[test]
    fn on_threads_keeps_order_errors_and_panics() {
        for threads in [1, 2, 3, 16] {
            let items: Vec<u64> = (0..100).collect();
            // Unequal work, so the threads take items out of step.
            let squares = on_threads(
                threads,
                items,
                |i| -> Result<u64, String> {
                    std::thread::sleep(std::time::Duration::from_micros((i % 7) * 50));
                    Ok(i * i)
                },
                || "panicked".to_string(),
            )
            .unwrap();
            assert_eq!(squares, (0..100).map(|i| i * i).collect::<Vec<_>>());
            let failed = on_threads(
                threads,
                (0..50).collect(),
                |i: u32| {
                    if i % 20 == 13 {
                        Err(format!("item {i}"))
                    } else {
                        Ok(i)
                    }
                },
                || "panicked".to_string(),
            );
            assert_eq!(failed, Err("item 13".to_string()), "{threads} threads");
        }
        let panicked = on_threads(
            2,
            vec![1, 2, 3],
            |i: i32| -> Result<i32, String> {
                if i == 2 {
                    panic!("a task that panics");
                }
                Ok(i)
            },
            || "a thread panicked".to_string(),
        );
        assert_eq!(panicked, Err("a thread panicked".to_string()));
        let none: Result<Vec<u8>, String> = on_threads(4, Vec::new(), Ok, String::new);
        assert_eq!(none, Ok(Vec::new()));
    }
}
