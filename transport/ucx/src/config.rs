//! dimstore's own UCX settings (UCX's are its `UCX_*` environment variables).

use dimstore_transport::onesided::{DEFAULT_CHUNK, DEFAULT_IN_FLIGHT};

/// Settings of the UCX reader (the exporter has none of its own yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UcxConfig {
    /// Largest piece one get moves, in bytes; longer regions are read in chunks.
    pub chunk: usize,
    /// Gets in flight per endpoint at most (over tcp, more than about two large emulated
    /// gets in flight collapse the bandwidth).
    pub in_flight: usize,
    /// Whether clients send their requests as UCX active messages on a channel (`true`,
    /// the default) or on the TCP connection (object bytes move by UCX either way).
    pub requests_over_am: bool,
}

impl Default for UcxConfig {
    fn default() -> Self {
        UcxConfig {
            chunk: DEFAULT_CHUNK,
            in_flight: DEFAULT_IN_FLIGHT,
            requests_over_am: true,
        }
    }
}

impl UcxConfig {
    /// The defaults overridden by `DIMSTORE_UCX_CHUNK` (bytes, with an optional `k`, `m`
    /// or `g` binary suffix), `DIMSTORE_UCX_IN_FLIGHT` (a count) and
    /// `DIMSTORE_UCX_REQUESTS` (`am` or `tcp`). Values that do not parse, or are zero,
    /// are ignored with a warning.
    pub fn from_env() -> Self {
        let mut config = Self::default();
        if let Ok(text) = std::env::var("DIMSTORE_UCX_REQUESTS") {
            match text.trim() {
                "am" => config.requests_over_am = true,
                "tcp" => config.requests_over_am = false,
                _ => tracing::warn!("ignoring DIMSTORE_UCX_REQUESTS={text:?}: expected am or tcp"),
            }
        }
        if let Some(chunk) = env_value("DIMSTORE_UCX_CHUNK", parse_bytes) {
            config.chunk = chunk;
        }
        if let Some(n) = env_value("DIMSTORE_UCX_IN_FLIGHT", |s| s.parse().ok()) {
            config.in_flight = n;
        }
        config
    }

    /// The settings with zeros replaced by one (a read must make progress).
    pub(crate) fn sanitized(self) -> Self {
        UcxConfig {
            chunk: self.chunk.max(1),
            in_flight: self.in_flight.max(1),
            ..self
        }
    }
}

/// The non-zero value of the environment variable `name`, parsed by `parse`.
fn env_value(name: &str, parse: impl Fn(&str) -> Option<usize>) -> Option<usize> {
    let text = std::env::var(name).ok()?;
    match parse(text.trim()) {
        Some(v) if v > 0 => Some(v),
        _ => {
            tracing::warn!("ignoring {name}={text:?}: expected a positive number");
            None
        }
    }
}

/// `123`, `64k`, `4M`, `1g` (binary multiples) as bytes.
fn parse_bytes(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    let (digits, shift) = match lower.as_bytes().last() {
        Some(b'k') => (&lower[..lower.len() - 1], 10),
        Some(b'm') => (&lower[..lower.len() - 1], 20),
        Some(b'g') => (&lower[..lower.len() - 1], 30),
        _ => (lower.as_str(), 0),
    };
    let value: usize = digits.trim().parse().ok()?;
    value.checked_mul(1usize << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("64k"), Some(64 << 10));
        assert_eq!(parse_bytes("4M"), Some(4 << 20));
        assert_eq!(parse_bytes("1g"), Some(1 << 30));
        assert_eq!(parse_bytes("x"), None);
        assert_eq!(parse_bytes(""), None);
    }
}
