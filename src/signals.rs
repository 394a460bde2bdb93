//! SIGINT and SIGTERM: the first asks the run to stop at the next safe point
//! (after the handler call in progress returns and is recorded); a second one
//! ends the process at once (which is safe too, only less tidy: see the
//! crash guarantees).
//!
//! Not here: what stopping means for a run (the pipeline and the engine ask
//! `requested()` between records and between calls).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::flag;

static STOP: AtomicUsize = AtomicUsize::new(0);
static ARMED: AtomicBool = AtomicBool::new(false);
static HUP: AtomicBool = AtomicBool::new(false);

/// For a long-lived process (`watch`): SIGHUP asks it to reload its config
/// (instead of ending it). See `hangup`.
pub fn install_hangup() -> std::io::Result<()> {
    flag::register(SIGHUP, &HUP)?;
    Ok(())
}

/// Whether SIGHUP came since the last call (taking it).
pub fn hangup() -> bool {
    HUP.swap(false, Ordering::SeqCst)
}

/// Whether SIGHUP came and is not taken yet.
pub fn hangup_pending() -> bool {
    HUP.load(Ordering::SeqCst)
}

/// Installs the handlers. Until this is called, signals keep their default
/// action (the process ends).
pub fn install() -> std::io::Result<()> {
    for signal in [SIGINT, SIGTERM] {
        // Registered first, so that it sees ARMED as the previous signal left it.
        flag::register_conditional_shutdown(signal, 128 + signal, &ARMED)?;
        flag::register_usize(signal, &STOP, signal as usize)?;
        flag::register(signal, &ARMED)?;
    }
    Ok(())
}

/// The signal that asked the run to stop, if any.
pub fn requested() -> Option<Stop> {
    match STOP.load(Ordering::SeqCst) {
        0 => None,
        n => Some(Stop(n as i32)),
    }
}

/// A stop request, by signal number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop(pub i32);

impl Stop {
    pub fn name(self) -> &'static str {
        match self.0 {
            SIGINT => "SIGINT",
            SIGTERM => "SIGTERM",
            _ => "a signal",
        }
    }

    /// The conventional exit status of a process stopped by this signal.
    pub fn exit_code(self) -> u8 {
        u8::try_from(128 + self.0).unwrap_or(130)
    }
}
