//! Faults that only test builds (feature `test-hooks`) can inject, and only by
//! signal from the machine itself, never by anything a client sends.

/// SIGUSR2 in a test build: the worker stops turning its event loop, as a worker
/// stuck in a loop would, so the master's watchdog can be seen to act.
pub fn hang() -> ! {
    log::warn!("test hook: worker hanging on purpose");
    loop {
        std::hint::spin_loop();
    }
}
