//! Hints to the memory allocator where they pay: Linux with glibc. Elsewhere each function does
//! nothing.
//!
//! - [`tune_allocator`]: one malloc arena per core instead of glibc's eight per core. Buffers freed by
//!   one thread (Parquet decoding allocates and frees a buffer per page) are found again by the
//!   next allocation instead of new pages being faulted in: at the shared workload's medium
//!   scale it took 1.7-1.8 s of system time instead of 2.2-2.6 s (benches/README.md).
//!
//! - [`release_free_memory`]: gives free memory back to the kernel once a join has sent a large
//!   amount to disk. At the shared workload's large scale under `--memory-limit 1GiB` the peak
//!   fell from 1.96 GB to 1.52 GB, in the same time (benches/README.md): between the phases of a
//!   spilling join glibc kept the freed pages in the middle of its heaps (the live heap peaked
//!   at 1.20 GB).
//!
//! - [`prefetch`]: asks the CPU for memory a loop will read a few rows on.
//!
//! Tried and left out: transparent huge pages for an as-of index's entries. Probes got 8-15%
//! faster, but in this machine's VM a fresh huge page costs so much to zero that building the
//! index (arrays allocated, filled and dropped per build) got slower by as much, and some runs
//! by 0.2 s (benches/README.md). Tried again for a window join's accumulators and label times
//! (`madvise` before the first touch, 84 MB on huge pages at medium): medians of six runs
//! 1.12 s against 1.125 s without, and 10-20 MB more memory; left out too.

// Calls into libc that change an allocator setting or advise the kernel, and a prefetch hint;
// see each.
#![allow(unsafe_code)]

/// Limits glibc's malloc to one arena per core. Call it first thing in `main`, before any other
/// thread starts.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = i32::try_from(cores).unwrap_or(i32::MAX);
        // SAFETY: mallopt only changes malloc's settings; M_ARENA_MAX takes any positive count.
        // Its result (1 on success, 0 if refused) needs no handling: the default stays.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Gives the memory malloc holds free back to the kernel, the pages in the middle of its heaps
/// too (glibc returns only a heap's free top by itself). Called where an operator has just
/// dropped a large amount that the next phase would not reuse at once: the right rows of a
/// build that went to disk, the left rows handed on from a spill file.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks malloc's own free lists and advises the kernel about
        // free pages; it touches no memory in use. Its result (whether any was released)
        // needs no handling.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Asks the CPU to bring `slice[i]` into its cache; nothing past the end, nothing off x86-64.
#[inline(always)]
pub fn prefetch<T>(slice: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(x) = slice.get(i) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: SSE is part of every x86-64 CPU, and a prefetch is a hint that reads no
        // memory the program sees (here, an element of a live slice).
        unsafe { _mm_prefetch::<_MM_HINT_T0>((x as *const T).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (slice, i);
}
