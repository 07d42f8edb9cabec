//! The allocator's one setting: as many malloc arenas as cores, not glibc's eight per core.
//!
//! glibc gives a thread that meets contention its own arena and keeps freed memory in
//! each, so a server whose requests move between tokio workers, the store's blocking-pool
//! threads and the push thread holds the same free space many times over. Measured on two
//! cores, 10k configs of 1 KiB (`scripts/bench config --only rss`): 53–54 MiB resident with
//! glibc's default, 47–49 MiB with two arenas, 47–48 MiB with one. One arena cost durable
//! publish throughput about a fifth (contention on its lock between the HTTP workers and
//! the store's threads); one per core did not (`--only publish`). An operator's own
//! `MALLOC_ARENA_MAX` wins.

/// Caps glibc's malloc at one arena per core, unless `MALLOC_ARENA_MAX` says otherwise.
/// Call it before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn one_arena_per_core() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
    // SAFETY: `mallopt` sets one integer parameter of glibc's allocator under the
    // allocator's own lock; it reads and writes no memory of ours, and M_ARENA_MAX only
    // bounds how many arenas later threads may create.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

/// Other allocators need no setting.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn one_arena_per_core() {}
