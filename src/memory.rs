//! Hints to the operating system's memory manager where they pay: Linux with glibc. Elsewhere
//! each function does nothing.
//!
//! - [`tune_allocator`]: one malloc arena per core instead of glibc's eight. Buffers freed by
//!   one thread (Parquet decoding allocates and frees a buffer per page) are found again by the
//!   next allocation instead of new pages being faulted in: at the shared workload's medium
//!   scale this took about 0.5 s of system time off a 4.4 s as-of query (benches/README.md).
//! - [`advise_huge_pages`]: backs a large, long-lived buffer that is read at random (an as-of
//!   index's entries) with transparent huge pages, so that its random reads miss the TLB far
//!   less and filling it faults in 2 MiB at a time, not 4 KiB.

// Two calls into libc, each on memory this process owns or on allocator settings; see each.
#![allow(unsafe_code)]

/// Buffers smaller than this are left alone: a huge page is 2 MiB, and below a few of them the
/// advice cannot cover much.
const HUGE_MIN_BYTES: usize = 8 << 20;

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

/// Asks the kernel to back `buffer`'s allocation (its whole capacity) with transparent huge
/// pages, when it is at least [`HUGE_MIN_BYTES`]. Call it before the buffer is written, so that
/// its first writes fault in huge pages; the contents are never changed. Does nothing when
/// transparent huge pages are off.
pub fn advise_huge_pages<T>(buffer: &Vec<T>) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes = buffer.capacity() * size_of::<T>();
        if bytes < HUGE_MIN_BYTES {
            return;
        }
        // The whole huge pages inside the allocation only.
        let start = buffer.as_ptr() as usize;
        let from = start.next_multiple_of(HUGE);
        let to = (start + bytes) / HUGE * HUGE;
        if to <= from {
            return;
        }
        // SAFETY: `from..to` lies inside the allocation `buffer` owns (its capacity), and
        // MADV_HUGEPAGE only changes how the kernel backs those pages, never their contents;
        // an error (transparent huge pages not built in) leaves them as they are.
        unsafe {
            libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advised_buffers_keep_their_contents() {
        let mut v: Vec<u64> = Vec::with_capacity(3 << 20);
        advise_huge_pages(&v);
        v.extend(0..3 << 20);
        advise_huge_pages(&v);
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64));
        let small = vec![7u8; 10];
        advise_huge_pages(&small);
        assert_eq!(small, vec![7u8; 10]);
    }
}
