//! The run lock: one `process-sources` (or retry) at a time per database.
//!
//! An advisory lock (`flock`) on a file next to the database,
//! `<database>-spark.lock`. The kernel releases it when the process ends,
//! however it ends, so a killed run never blocks later ones. The file itself
//! is left in place (removing it would race with a run about to lock it).
//!
//! Not here: SQLite's own locking, which still guards every transaction.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Held for as long as a run works; released when dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    pub path: PathBuf,
}

/// The lock file of a database.
pub fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push("-spark.lock");
    PathBuf::from(name)
}

impl RunLock {
    /// Takes the lock of `database`, waiting up to `wait` for another run.
    pub fn acquire(database: &Path, wait: Duration) -> Result<RunLock> {
        let path = lock_path(database);
        let lock_err = |error| Error::Lock {
            path: path.clone(),
            error,
        };
        // Only a database still to be made from `create_from` lacks its folder.
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            std::fs::create_dir_all(dir).map_err(lock_err)?;
        }
        // Private whatever the umask: the lock holds nothing, but nobody
        // else has business writing it.
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(crate::files::PRIVATE)
            .open(&path)
            .map_err(lock_err)?;
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(RunLock { _file: file, path }),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(50));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(Error::Busy {
                        database: database.to_owned(),
                        lock: path,
                    });
                }
                Err(TryLockError::Error(error)) => return Err(lock_err(error)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.sqlite3");
        let first = RunLock::acquire(&db, Duration::ZERO).unwrap();
        assert!(matches!(
            RunLock::acquire(&db, Duration::from_millis(100)),
            Err(Error::Busy { .. })
        ));
        drop(first);
        RunLock::acquire(&db, Duration::ZERO).unwrap();
    }
}
