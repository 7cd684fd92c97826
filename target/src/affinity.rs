//! Pinning reactor threads to cores (sched_setaffinity on the calling thread).

use tracing::warn;

/// Pin the calling thread to `core`. Failure (e.g. a restricted cpuset) is logged, not fatal.
pub fn pin_to_core(core: usize) {
    // SAFETY: cpu_set_t is a plain bitmask for which all-zero is a valid (empty) value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if core >= libc::CPU_SETSIZE as usize {
        warn!(core, "core id beyond CPU_SETSIZE; not pinning");
        return;
    }
    // SAFETY: CPU_SET writes one bit inside `set`, and `core` < CPU_SETSIZE was checked above.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: pid 0 means the calling thread; `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        warn!(core, error = %std::io::Error::last_os_error(), "cannot pin reactor to core");
    }
}
