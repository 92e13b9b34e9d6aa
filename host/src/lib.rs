//! What the processes of dimstore (client, server, launcher, SPANK plugin) need to know about
//! the host they run on: its name, the processes on it by pid, the files a server leaves
//! (its ready file and its log), and fresh fleet tokens.
//!
//! Each of these was written two or three times across the crates; they live here once.
//! Everything here is small, synchronous and Linux-specific (`/proc`, `uname`).
#![forbid(unsafe_code)]

pub mod process;
pub mod server_files;

/// The host name (the UTS namespace's, so simulated nodes in their own namespaces differ).
/// Clients and servers use it as the default node identity.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// A fresh random fleet token: 32 hex digits (128 random bits).
pub fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_is_the_kernels_node_name() {
        let from_proc = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
        assert_eq!(hostname(), from_proc.trim_end());
    }

    #[test]
    fn tokens_are_fresh_hex() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
