//! The control plane's signals (SIGINT/SIGTERM: stop; SIGHUP: re-read the configuration file):
//! blocked in every thread, awaited by one.

/// A blocked set of SIGINT, SIGTERM and SIGHUP.
pub struct TerminationSignals {
    set: libc::sigset_t,
}

/// Block SIGINT, SIGTERM and SIGHUP in the calling thread (and so in every thread it spawns afterwards).
pub fn block_termination_signals() -> TerminationSignals {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame; the calls only write into it and into
    // the thread's signal mask.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    TerminationSignals { set }
}

impl TerminationSignals {
    /// Wait for one of the signals; returns its name.
    pub fn wait(&self) -> &'static str {
        let mut sig: libc::c_int = 0;
        // SAFETY: `self.set` is an initialised sigset_t and `sig` a valid out pointer.
        unsafe { libc::sigwait(&self.set, &mut sig) };
        match sig {
            libc::SIGINT => "SIGINT",
            libc::SIGHUP => "SIGHUP",
            _ => "SIGTERM",
        }
    }
}
