//! Hints to the memory allocator where they pay: Linux with glibc. Elsewhere each function does
//! nothing.
//!
//! - [`tune_allocator`]: one malloc arena per core instead of glibc's eight per core. Buffers freed by
//!   one thread (Parquet decoding allocates and frees a buffer per page) are found again by the
//!   next allocation instead of new pages being faulted in: at the shared workload's medium
//!   scale it took 1.7-1.8 s of system time instead of 2.2-2.6 s (benches/README.md).
//!
//! Tried and left out: transparent huge pages (`madvise`) for an as-of index's entries. Probes
//! got 8-15% faster, but in this machine's VM a fresh huge page costs so much to zero that
//! building the index got slower by as much, and some runs by 0.2 s (benches/README.md).

// One call into libc that changes an allocator setting; see it.
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
