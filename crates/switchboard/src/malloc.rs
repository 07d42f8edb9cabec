//! The allocator's one setting: a single malloc arena.
//!
//! glibc gives a thread that meets contention its own arena (up to eight per core) and
//! keeps freed memory in each, so a server whose requests move between tokio workers,
//! the store's blocking-pool threads and the push thread holds the same free space many
//! times over. Measured with `scripts/bench config --only rss` (10k configs of 1 KiB):
//! 57 MiB with glibc's default, 48 MiB with one arena; config get and publish throughput
//! did not move (each thread's cache serves small allocations without the arena's lock).
//! An operator's own `MALLOC_ARENA_MAX` wins.

/// Caps glibc's malloc at one arena, unless `MALLOC_ARENA_MAX` says otherwise. Call it
/// before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn use_one_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: `mallopt` sets one integer parameter of glibc's allocator under the
    // allocator's own lock; it reads and writes no memory of ours, and M_ARENA_MAX only
    // bounds how many arenas later threads may create.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Other allocators need no setting.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn use_one_arena() {}
