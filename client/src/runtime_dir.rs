//! The runtime directory (`DIMSTORE_RUNTIME_DIR`): where a node's server leaves its ready
//! file and where the per-user token of spawned servers is kept.
//!
//! Everything here is trusted only if this user owns it and nobody else can change it: the
//! directories must be owned by the user with no access for group or others (0700), the
//! ready file must be owned by the user and not writable by group or others, the token file
//! owned by the user with no access for group or others (0600). A directory planted by
//! another user (say under `/tmp`) is refused with [`RuntimeDirError`] instead of trusted.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use dimstore_host::server_files::MAX_READY_FILE_LEN;
use dimstore_proto::ReadyFile;
use rustix::fs::{Mode, OFlags};

/// Name of the per-user token file in the runtime directory.
pub const TOKEN_FILE: &str = "token";

/// Longest token file accepted.
const MAX_TOKEN_LEN: u64 = 4096;

/// Why the runtime directory (or a file in it) cannot be trusted or used.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeDirError {
    /// Owned by another user.
    #[error("runtime directory: {path} is owned by uid {owner}, not by this user (uid {uid}); refusing to use it (another user may have planted it): remove it or set DIMSTORE_RUNTIME_DIR to a directory of your own")]
    NotOwned {
        /// The directory or file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        uid: u32,
    },
    /// Group or others may access (a directory, the token) or write (the ready file) it.
    #[error("runtime directory: {path} has mode {mode:04o}; it must give group and others {needed} (chmod {fix:04o} {path})")]
    TooOpen {
        /// The directory or file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// What group and others must lack.
        needed: &'static str,
        /// The mode to set.
        fix: u32,
    },
    /// Not a directory (or a symbolic link where a directory or file must be).
    #[error("runtime directory: {path} is {what}; expected {expected}")]
    WrongKind {
        /// The path.
        path: PathBuf,
        /// What it is.
        what: &'static str,
        /// What it should be.
        expected: &'static str,
    },
    /// The token file holds no usable token.
    #[error("runtime directory: {path} holds no token (expected one line of at most {MAX_TOKEN_LEN} bytes)")]
    BadToken {
        /// The token file.
        path: PathBuf,
    },
    /// A file-system operation failed.
    #[error("runtime directory: cannot use {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeDirError + '_ {
    move |source| RuntimeDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (and missing parents) with mode 0700 if needed, then checks it as
/// [`check_private_dir`] does.
pub fn ensure_private_dir(dir: &Path) -> Result<(), RuntimeDirError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error(dir))?;
    check_private_dir(dir)
}

/// Checks that `dir` is a directory (not a link) owned by this user with no access for group
/// or others.
pub fn check_private_dir(dir: &Path) -> Result<(), RuntimeDirError> {
    let meta = std::fs::symlink_metadata(dir).map_err(io_error(dir))?;
    if meta.file_type().is_symlink() {
        return Err(RuntimeDirError::WrongKind {
            path: dir.to_path_buf(),
            what: "a symbolic link",
            expected: "a directory",
        });
    }
    if !meta.is_dir() {
        return Err(RuntimeDirError::WrongKind {
            path: dir.to_path_buf(),
            what: "not a directory",
            expected: "a directory",
        });
    }
    check_owner(dir, meta.uid())?;
    check_mode(dir, meta.mode(), 0o077, "no access", 0o700)
}

/// The ready file at `path`, if there is one that parses. `Err` when it exists but cannot
/// be trusted (another owner, writable by group or others, a link).
pub fn read_ready(path: &Path) -> Result<Option<ReadyFile>, RuntimeDirError> {
    let Some(mut file) = open_private(path, 0o022, "no write access", 0o644)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    (&mut file)
        .take(MAX_READY_FILE_LEN)
        .read_to_end(&mut bytes)
        .map_err(io_error(path))?;
    Ok(serde_json::from_slice(&bytes).ok())
}

/// The per-user token of spawned servers (`<dir>/token`): read if it exists (and is private),
/// else generated and written with mode 0600. Creation is atomic (a complete file is linked
/// into place), so racing processes all end up with the one token that won.
pub fn token(dir: &Path) -> Result<String, RuntimeDirError> {
    let path = dir.join(TOKEN_FILE);
    if let Some(token) = read_token(&path)? {
        return Ok(token);
    }
    let fresh = format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    let tmp = dir.join(format!(
        ".{TOKEN_FILE}.{}.{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = (|| {
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(fresh.as_bytes())?;
        file.sync_all()?;
        std::fs::hard_link(&tmp, &path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => Ok(fresh),
        // Another process linked its token first: use that one.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            read_token(&path)?.ok_or(RuntimeDirError::BadToken { path })
        }
        Err(source) => Err(RuntimeDirError::Io { path, source }),
    }
}

/// The token in `path`, `None` if the file does not exist.
pub fn read_token(path: &Path) -> Result<Option<String>, RuntimeDirError> {
    let Some(mut file) = open_private(path, 0o077, "no access", 0o600)? else {
        return Ok(None);
    };
    let mut text = String::new();
    (&mut file)
        .take(MAX_TOKEN_LEN + 1)
        .read_to_string(&mut text)
        .map_err(io_error(path))?;
    let token = text.trim();
    if token.is_empty() || text.len() as u64 > MAX_TOKEN_LEN || token.contains('\n') {
        return Err(RuntimeDirError::BadToken {
            path: path.to_path_buf(),
        });
    }
    Ok(Some(token.to_string()))
}

/// Opens `path` for reading without following links; `None` if it does not exist. Checks
/// on the open file that it is a regular file owned by this user whose mode has none of
/// `forbidden`.
fn open_private(
    path: &Path,
    forbidden: u32,
    needed: &'static str,
    fix: u32,
) -> Result<Option<File>, RuntimeDirError> {
    let fd = match rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => {
            return Err(RuntimeDirError::WrongKind {
                path: path.to_path_buf(),
                what: "a symbolic link",
                expected: "a regular file",
            })
        }
        Err(e) => return Err(io_error(path)(e.into())),
    };
    let file = File::from(fd);
    let meta = file.metadata().map_err(io_error(path))?;
    if !meta.is_file() {
        return Err(RuntimeDirError::WrongKind {
            path: path.to_path_buf(),
            what: "not a regular file",
            expected: "a regular file",
        });
    }
    check_owner(path, meta.uid())?;
    check_mode(path, meta.mode(), forbidden, needed, fix)?;
    Ok(Some(file))
}

fn check_owner(path: &Path, owner: u32) -> Result<(), RuntimeDirError> {
    let uid = rustix::process::geteuid().as_raw();
    if owner != uid {
        return Err(RuntimeDirError::NotOwned {
            path: path.to_path_buf(),
            owner,
            uid,
        });
    }
    Ok(())
}

fn check_mode(
    path: &Path,
    mode: u32,
    forbidden: u32,
    needed: &'static str,
    fix: u32,
) -> Result<(), RuntimeDirError> {
    if mode & forbidden != 0 {
        return Err(RuntimeDirError::TooOpen {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
            needed,
            fix,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn creates_a_private_dir_and_refuses_open_ones() {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join("a/b");
        ensure_private_dir(&dir).expect("created");
        let mode = std::fs::metadata(&dir).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        ensure_private_dir(&dir).expect("exists and private");
        chmod(&dir, 0o777);
        let err = ensure_private_dir(&dir).expect_err("world-writable");
        assert!(
            matches!(err, RuntimeDirError::TooOpen { mode: 0o777, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains(&dir.display().to_string()),
            "{err}"
        );
        chmod(&dir, 0o750);
        assert!(ensure_private_dir(&dir).is_err(), "group access");
        let link = base.path().join("link");
        chmod(&dir, 0o700);
        std::os::unix::fs::symlink(&dir, &link).expect("symlink");
        let err = ensure_private_dir(&link).expect_err("a link");
        assert!(matches!(err, RuntimeDirError::WrongKind { .. }), "{err}");
    }

    #[test]
    fn token_is_created_once_private_and_reread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = token(dir.path()).expect("created");
        assert_eq!(first.len(), 64);
        let path = dir.path().join(TOKEN_FILE);
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(token(dir.path()).expect("reread"), first);
        // Racing creators agree on one token.
        let other = tempfile::tempdir().expect("tempdir");
        let tokens: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| token(other.path()))).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("join").expect("token"))
                .collect()
        });
        assert!(tokens.iter().all(|t| *t == tokens[0]), "{tokens:?}");
        assert_eq!(std::fs::read_dir(other.path()).expect("ls").count(), 1);
        chmod(&path, 0o644);
        let err = token(dir.path()).expect_err("readable by others");
        assert!(matches!(err, RuntimeDirError::TooOpen { .. }), "{err}");
    }

    #[test]
    fn ready_file_must_not_be_writable_by_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("server.json");
        assert!(read_ready(&path).expect("absent").is_none());
        std::fs::write(
            &path,
            r#"{"address":"127.0.0.1:1","pid":1,"node":"n","server_id":1,"transports":[],"version":"0"}"#,
        )
        .expect("write");
        chmod(&path, 0o644);
        assert_eq!(
            read_ready(&path).expect("private").expect("parses").address,
            "127.0.0.1:1"
        );
        chmod(&path, 0o666);
        let err = read_ready(&path).expect_err("world-writable");
        assert!(matches!(err, RuntimeDirError::TooOpen { .. }), "{err}");
    }
}
