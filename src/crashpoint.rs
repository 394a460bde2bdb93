//! Crash points for the crash-safety tests: in a debug build, with
//! `SPARK_CRASH_AT=NAME:N` in the environment, the process kills itself with
//! SIGKILL the N-th time it reaches `hit("NAME")`, exactly as `kill -9` at
//! that instant would. Release builds compile `hit` to nothing.
//!
//! The points: `batch-recorded` (a batch's events and deliveries are
//! committed, no handler called yet), `jsonl-partial` (half of a delivery's
//! lines written), `jsonl-written` (all written, not yet fsynced),
//! `jsonl-synced` (fsynced, not yet recorded done), `call-returned` (a
//! handler call returned success, not yet recorded).

/// Reports reaching crash point `name`.
#[inline]
pub fn hit(name: &str) {
    #[cfg(debug_assertions)]
    armed::hit(name);
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// Whether the next `hit(name)` kills the process (so that a caller can
/// first leave the state it wants the crash to find).
#[inline]
pub fn is_next(name: &str) -> bool {
    #[cfg(debug_assertions)]
    return armed::is_next(name);
    #[cfg(not(debug_assertions))]
    {
        let _ = name;
        false
    }
}

#[cfg(debug_assertions)]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static TARGET: OnceLock<Option<(String, usize)>> = OnceLock::new();
    static HITS: AtomicUsize = AtomicUsize::new(0);

    fn target() -> Option<&'static (String, usize)> {
        TARGET
            .get_or_init(|| {
                let spec = std::env::var("SPARK_CRASH_AT").ok()?;
                let (name, n) = spec.rsplit_once(':')?;
                Some((name.to_owned(), n.parse().ok()?))
            })
            .as_ref()
    }

    pub fn is_next(name: &str) -> bool {
        target().is_some_and(|(t, n)| t == name && HITS.load(Ordering::SeqCst) + 1 == *n)
    }

    pub fn hit(name: &str) {
        let Some((t, n)) = target() else { return };
        if t == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            // SAFETY: kill(2) on this very process; nothing after it runs.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}
