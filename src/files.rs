//! Files spark writes on the operator's machine, written the safe way:
//! whole (a temporary file with an unpredictable name, created exclusively,
//! fsynced, then renamed into place), never through a symbolic link spark
//! did not create, and private (0600) unless configured otherwise. Also the
//! two questions the trust rules ask of paths: are these two paths one file
//! (resolved through links and `..`), and is this still the file spark
//! wrote to (device and inode).
//!
//! Not here: what goes into the files (handlers, metrics).

use std::fmt;
use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// The mode of files holding event data unless a handler sets `mode`.
pub const PRIVATE: u32 = 0o600;

/// The mode of a folder spark creates for files of mode `file_mode`: the
/// owner always has it all; others get read and search where the files
/// give them read.
pub fn dir_mode(file_mode: u32) -> u32 {
    let mut mode = 0o700;
    for (read, both) in [(0o040, 0o050), (0o004, 0o005)] {
        if file_mode & read != 0 {
            mode |= both;
        }
    }
    mode
}

/// The folder a file lives in (`.` for a bare name).
pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Creates `dir` and its missing parents with `mode` (existing folders are
/// left as they are).
pub fn create_dir_all(dir: &Path, mode: u32) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new().recursive(true).mode(mode).create(dir)
}

/// Makes a new name in `dir` durable (best effort: not every file system
/// lets a folder be fsynced).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `path` whole: into a temporary file created
/// exclusively under an unpredictable name in the same folder, with
/// `mode`, fsynced, then renamed over `path`. A link planted at `path` is
/// replaced, never written through; a reader sees the old file or the new
/// one, never half of it.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent(path);
    create_dir_all(dir, dir_mode(mode))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".spark-")
        .suffix(".tmp")
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    // The umask may have taken bits the mode asks for.
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir);
    Ok(())
}

/// Opens `path` for appending without following a link at its last
/// component; creates it with exactly `mode` (and its folder) if missing.
/// A link there is an error saying so.
pub fn open_append(path: &Path, mode: u32) -> io::Result<File> {
    let open = |create: bool| {
        OpenOptions::new()
            .append(true)
            .create_new(create)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    };
    let refused_link = |e: io::Error| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            io::Error::new(
                e.kind(),
                "it is a symbolic link, and spark does not write through links it did not create \
                 (point the handler at the file itself)",
            )
        } else {
            e
        }
    };
    match open(false) {
        Ok(file) => Ok(file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = parent(path);
            create_dir_all(dir, dir_mode(mode))?;
            let file = match open(true) {
                Ok(file) => file,
                // Created meanwhile by someone else: open what is there.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return open(false).map_err(refused_link);
                }
                Err(e) => return Err(refused_link(e)),
            };
            file.set_permissions(Permissions::from_mode(mode))?;
            sync_dir(dir);
            Ok(file)
        }
        Err(e) => Err(refused_link(e)),
    }
}

/// Which file an open file is: its device and inode. Two paths naming the
/// same identity are one file; a path whose identity changed names another
/// file than before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(file: &File) -> io::Result<FileId> {
        let meta = file.metadata()?;
        Ok(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Parses what `Display` writes (`dev:ino`).
    pub fn parse(text: &str) -> Option<FileId> {
        let (dev, ino) = text.split_once(':')?;
        Some(FileId {
            dev: dev.parse().ok()?,
            ino: ino.parse().ok()?,
        })
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.dev, self.ino)
    }
}

/// `path` resolved for comparing with another: the longest part that
/// exists resolved through links (canonical), the rest appended with `.`
/// and `..` taken lexically (nothing there exists, so no link can make
/// that wrong). A trailing `/` makes no difference.
pub fn resolved(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut existing = absolute.as_path();
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return normalized(&out);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(up), Some(name)) => {
                rest.push(name);
                existing = up;
            }
            // `..` or `.` at the end of a missing path: resolve lexically.
            (Some(up), None) => {
                rest.push(
                    existing
                        .components()
                        .next_back()
                        .map_or_else(|| std::ffi::OsStr::new("."), |c| c.as_os_str()),
                );
                existing = up;
            }
            (None, _) => return normalized(&absolute),
        }
    }
}

/// `.` and `..` taken lexically.
fn normalized(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_path_resolve_alike() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        std::fs::create_dir(base.join("out")).unwrap();
        std::os::unix::fs::symlink(base.join("out"), base.join("link")).unwrap();
        let one = resolved(&base.join("out/x.jsonl"));
        for other in [
            "./out/x.jsonl",
            "link/x.jsonl",
            "out/../out/x.jsonl",
            "out/./x.jsonl",
        ] {
            assert_eq!(resolved(&base.join(other)), one, "{other}");
        }
        let missing = resolved(&base.join("new/a/../b.jsonl"));
        assert_eq!(missing, resolved(&base.join("new/b.jsonl")));
        assert_eq!(
            resolved(&base.join("mails/")),
            resolved(&base.join("./mails"))
        );
        assert_ne!(resolved(&base.join("out/y.jsonl")), one);
    }

    #[test]
    fn dir_modes_follow_the_file_mode() {
        assert_eq!(dir_mode(0o600), 0o700);
        assert_eq!(dir_mode(0o640), 0o750);
        assert_eq!(dir_mode(0o644), 0o755);
    }

    #[test]
    fn atomic_writes_replace_a_planted_link_instead_of_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let target = dir.path().join("out.eml");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        write_atomically(&target, b"mail", PRIVATE).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "mail");
        let meta = std::fs::symlink_metadata(&target).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn appending_refuses_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let link = dir.path().join("events.jsonl");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = open_append(&link, PRIVATE).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let fresh = open_append(&dir.path().join("sub/new.jsonl"), 0o640).unwrap();
        assert_eq!(
            fresh.metadata().unwrap().permissions().mode() & 0o777,
            0o640
        );
        let id = FileId::of(&fresh).unwrap();
        assert_eq!(FileId::parse(&id.to_string()), Some(id));
    }
}
