//! What the plugin is told: its arguments in `plugstack.conf`, and the user's
//! `--dimstore=OPTIONS`.

use std::path::PathBuf;
use std::time::Duration;

/// Default directory under which each job gets its directory (`job<id>/<host>/...`).
pub const DEFAULT_RUNTIME_DIR: &str = "/tmp/dimstore-spank";

/// Default of how long a server may take to become ready.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A `plugstack.conf` argument or a `--dimstore` option that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Not `key=value`, or a key the plugin does not know.
    #[error("unknown {what} `{item}` (known: {known})")]
    Unknown {
        /// `"plugin argument"` or `"--dimstore option"`.
        what: &'static str,
        /// The item as written.
        item: String,
        /// The keys that are known.
        known: &'static str,
    },
    /// A known key with an unusable value.
    #[error("invalid value in `{item}`: {reason}")]
    Invalid {
        /// The item as written.
        item: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The plugin's arguments, from its line in `plugstack.conf`:
/// `optional /path/libdimstore_spank.so [bin_dir=DIR] [runtime_dir=DIR] [ready_timeout=SECS]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// Directory holding `dimstore-server` (and `dimstore`, added to the tasks' `PATH`);
    /// default: the plugin's own directory when the server is there, else `PATH`.
    pub bin_dir: Option<PathBuf>,
    /// Where per-job directories go (node-local storage; default [`DEFAULT_RUNTIME_DIR`]).
    pub runtime_dir: PathBuf,
    /// How long a server may take to become ready.
    pub ready_timeout: Duration,
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig {
            bin_dir: None,
            runtime_dir: PathBuf::from(DEFAULT_RUNTIME_DIR),
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }
}

const PLUGIN_KEYS: &str = "bin_dir, runtime_dir, ready_timeout";

impl PluginConfig {
    /// Parses the plugin's arguments.
    ///
    /// # Errors
    /// An unknown key, a relative directory, or a timeout that is not a whole number of
    /// seconds.
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<PluginConfig, ConfigError> {
        let mut config = PluginConfig::default();
        for arg in args {
            let item = arg.as_ref();
            let invalid = |reason| ConfigError::Invalid {
                item: item.to_owned(),
                reason,
            };
            let absolute = |value: &str| {
                let path = PathBuf::from(value);
                if path.is_absolute() {
                    Ok(path)
                } else {
                    Err(invalid("must be an absolute path"))
                }
            };
            match item.split_once('=') {
                Some(("bin_dir", value)) => config.bin_dir = Some(absolute(value)?),
                Some(("runtime_dir", value)) => config.runtime_dir = absolute(value)?,
                Some(("ready_timeout", value)) => {
                    let secs: u64 = value
                        .parse()
                        .map_err(|_| invalid("expected whole seconds"))?;
                    if secs == 0 {
                        return Err(invalid("must be at least 1"));
                    }
                    config.ready_timeout = Duration::from_secs(secs);
                }
                _ => {
                    return Err(ConfigError::Unknown {
                        what: "plugin argument",
                        item: item.to_owned(),
                        known: PLUGIN_KEYS,
                    })
                }
            }
        }
        Ok(config)
    }
}

/// `--dimstore` option keys, each the server option of the same name.
const SERVER_KEYS: [&str; 10] = [
    "memory-limit",
    "segment-size",
    "threads",
    "log",
    "listen",
    "advertise",
    "stall-timeout",
    "eviction",
    "spill-dir",
    "spill-limit",
];
const SERVER_KEYS_TEXT: &str =
    "memory (= memory-limit), memory-limit, segment-size, threads, log, listen, advertise, \
     stall-timeout, eviction, spill-dir, spill-limit";

/// The server settings given as `--dimstore=key=value,key=value`, e.g.
/// `--dimstore=memory=8GiB,threads=4`. Values are checked by the server itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerOptions {
    /// `(server option, value)` pairs, in the order given.
    pub settings: Vec<(&'static str, String)>,
}

impl ServerOptions {
    /// Parses the option's argument (`None` or empty: no settings). `memory` is short for
    /// `memory-limit`; underscores may stand for dashes.
    ///
    /// # Errors
    /// An item that is not `key=value` with a known key and a non-empty value.
    pub fn parse(text: Option<&str>) -> Result<ServerOptions, ConfigError> {
        let mut settings = Vec::new();
        // Slurm passes "(null)" for an optional argument that was not given.
        let text = text.unwrap_or_default().trim();
        if text.is_empty() || text == "(null)" {
            return Ok(ServerOptions::default());
        }
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let unknown = || ConfigError::Unknown {
                what: "--dimstore option",
                item: item.to_owned(),
                known: SERVER_KEYS_TEXT,
            };
            let (key, value) = item.split_once('=').ok_or_else(unknown)?;
            let key = key.trim().replace('_', "-");
            let key = if key == "memory" {
                "memory-limit"
            } else {
                &key
            };
            let key = SERVER_KEYS
                .iter()
                .find(|k| **k == key)
                .ok_or_else(unknown)?;
            let value = value.trim();
            if value.is_empty() {
                return Err(ConfigError::Invalid {
                    item: item.to_owned(),
                    reason: "empty value",
                });
            }
            settings.push((*key, value.to_owned()));
        }
        Ok(ServerOptions { settings })
    }

    /// The settings as server arguments: `--memory-limit 8GiB ...`.
    pub fn args(&self) -> Vec<String> {
        self.settings
            .iter()
            .flat_map(|(k, v)| [format!("--{k}"), v.clone()])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_arguments_parse_and_are_checked() {
        assert_eq!(
            PluginConfig::parse::<&str>(&[]).expect("none"),
            PluginConfig::default()
        );
        let c = PluginConfig::parse(&[
            "bin_dir=/opt/d/bin",
            "runtime_dir=/run/d",
            "ready_timeout=5",
        ])
        .expect("valid");
        assert_eq!(c.bin_dir, Some(PathBuf::from("/opt/d/bin")));
        assert_eq!(c.runtime_dir, PathBuf::from("/run/d"));
        assert_eq!(c.ready_timeout, Duration::from_secs(5));
        assert!(matches!(
            PluginConfig::parse(&["bin_dir=relative"]),
            Err(ConfigError::Invalid { .. })
        ));
        assert!(matches!(
            PluginConfig::parse(&["ready_timeout=0"]),
            Err(ConfigError::Invalid { .. })
        ));
        let err = PluginConfig::parse(&["colour=blue"]).expect_err("unknown");
        assert!(err.to_string().contains("bin_dir"), "{err}");
    }

    #[test]
    fn server_options_map_to_server_flags() {
        for empty in [None, Some(""), Some("(null)"), Some(" , ")] {
            assert_eq!(
                ServerOptions::parse(empty).expect("empty"),
                ServerOptions::default()
            );
        }
        let o = ServerOptions::parse(Some("memory=8GiB, threads=4,stall_timeout=5s")).expect("ok");
        assert_eq!(
            o.args(),
            [
                "--memory-limit",
                "8GiB",
                "--threads",
                "4",
                "--stall-timeout",
                "5s"
            ]
        );
        let o = ServerOptions::parse(Some(
            "eviction=lru,spill_dir=/local/scratch,spill-limit=100GiB",
        ))
        .expect("ok");
        assert_eq!(
            o.args(),
            [
                "--eviction",
                "lru",
                "--spill-dir",
                "/local/scratch",
                "--spill-limit",
                "100GiB"
            ]
        );
        assert!(matches!(
            ServerOptions::parse(Some("memory")),
            Err(ConfigError::Unknown { .. })
        ));
        assert!(matches!(
            ServerOptions::parse(Some("colour=blue")),
            Err(ConfigError::Unknown { .. })
        ));
        assert!(matches!(
            ServerOptions::parse(Some("threads=")),
            Err(ConfigError::Invalid { .. })
        ));
    }
}
