//! Panics, seen by a user. A panic in a compiled-in source or handler
//! function is caught and becomes a skipped record or a failed delivery
//! carrying its message (see `catch`), so nothing is printed for it. Any other
//! panic is a bug in spark: it is reported in one `error:` line asking for a
//! bug report, not as Rust's panic text.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};

thread_local! {
    /// Set while user code runs inside `catch`.
    static IN_USER_CODE: Cell<bool> = const { Cell::new(false) };
}

/// Runs user code, turning a panic into `Err(message)`.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    IN_USER_CODE.with(|flag| flag.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    IN_USER_CODE.with(|flag| flag.set(false));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned())
    })
}

/// Replaces Rust's panic message with a short one (silent for panics that
/// `catch` turns into failures).
pub fn install_hook() {
    panic::set_hook(Box::new(|info| {
        if IN_USER_CODE.with(Cell::get) {
            return;
        }
        let location = info
            .location()
            .map(|l| format!(" ({}:{})", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        eprintln!(
            "error: internal error, a bug in spark: {message}{location}; please report it. \
             What was recorded before is consistent: a later run finishes it."
        );
    }));
}
