//! The files a server leaves on its host for whoever started it: its ready file (where it
//! listens, see [`dimstore_proto::ReadyFile`]) and its log.
//!
//! These readers are for a server one started oneself, in a directory one owns. A client
//! that finds a server through a shared runtime directory must check who wrote the file
//! first (`dimstore::runtime_dir::read_ready`), with [`MAX_READY_FILE_LEN`] as its bound too.

use std::io::Read;
use std::path::Path;

use dimstore_proto::ReadyFile;

/// The most bytes of a ready file read: a real one is a few hundred bytes, so anything
/// longer is not a ready file (it does not parse) and is not read whole.
pub const MAX_READY_FILE_LEN: u64 = 64 << 10;

/// The ready file at `path`, once it exists and parses (servers write it atomically, so a
/// file that exists is complete). `None` while it is absent, unreadable or not a ready file.
pub fn read_ready(path: &Path) -> Option<ReadyFile> {
    let file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_READY_FILE_LEN).read_to_end(&mut bytes).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The last `lines` lines of the log file at `path`, for error messages; empty when it
/// cannot be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    last_lines(&text, lines)
}

/// The last `lines` lines of `text`, joined by newlines (no trailing one).
pub fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> ReadyFile {
        ReadyFile {
            address: "127.0.0.1:7100".into(),
            pid: 42,
            node: "n1".into(),
            server_id: 7,
            transports: vec!["tcp".into()],
            version: "0.1.0".into(),
            metrics: None,
        }
    }

    #[test]
    fn a_ready_file_is_read_once_it_exists_and_parses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("server.json");
        assert_eq!(read_ready(&path), None);
        std::fs::write(&path, b"{\"address\":").expect("write");
        assert_eq!(read_ready(&path), None);
        std::fs::write(&path, serde_json::to_vec(&ready()).expect("json")).expect("write");
        assert_eq!(read_ready(&path), Some(ready()));
    }

    #[test]
    fn a_ready_file_is_read_up_to_the_bound_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("server.json");
        let json = serde_json::to_string(&ready()).expect("json");
        let padding = " ".repeat(MAX_READY_FILE_LEN as usize);
        // Valid JSON either way; the object after the padding lies beyond the bound.
        std::fs::write(&path, format!("{json}{padding}")).expect("write");
        assert_eq!(read_ready(&path), Some(ready()));
        std::fs::write(&path, format!("{padding}{json}")).expect("write");
        assert_eq!(read_ready(&path), None);
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("server.log");
        assert_eq!(log_tail(&path, 3), "");
        std::fs::write(&path, "a\nb\nc\nd\n").expect("write");
        assert_eq!(log_tail(&path, 2), "c\nd");
        assert_eq!(log_tail(&path, 10), "a\nb\nc\nd");
        assert_eq!(last_lines("x\ny", 0), "");
    }
}
