//! dimstore: a `dimstore-server` started by the bench, used through the `dimstore` client.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use dimstore::{ClientConfig, Key, LocalMode, SpawnPolicy, Store};
use dimstore_proto::ReadyFile;

use super::{poll_until, stop_child, Client, Contender, ContenderKind, ServerSetup};

/// A `dimstore-server` on 127.0.0.1, port chosen by the server, address from its ready file.
#[derive(Debug)]
pub struct DimstoreServer {
    kind: ContenderKind,
    child: Child,
    address: String,
    /// Holds the ready file and the server's log until the server is stopped.
    _dir: tempfile::TempDir,
}

impl DimstoreServer {
    /// Starts the server for contender `kind` (dimstore over TCP or on the same-node path)
    /// and waits for its ready file.
    pub fn start(kind: ContenderKind, setup: &ServerSetup) -> anyhow::Result<DimstoreServer> {
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let ready = dir.path().join("ready.json");
        let log_path = dir.path().join("server.log");
        let log = File::create(&log_path)?;
        // Room for the loaded objects, a put in flight and a margin; at least 1 GiB.
        let memory_mib = (setup.max_object.saturating_mul(4) >> 20).max(1024);
        let mut child = Command::new(&setup.dimstore_bin)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--ready-file")
            .arg(&ready)
            .arg("--memory-limit")
            .arg(format!("{memory_mib}MiB"))
            .arg("--threads")
            .arg(setup.dimstore_threads.to_string())
            .arg("--log")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (build it: cargo build --release -p dimstore-server, \
                     or pass --server-bin)",
                    setup.dimstore_bin.display()
                )
            })?;
        let ready = wait_ready(&mut child, &ready, Duration::from_secs(20), |status| {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            anyhow!("dimstore-server exited ({status}) before it was ready:\n{log}")
        })?;
        Ok(DimstoreServer {
            kind,
            child,
            address: ready.address,
            _dir: dir,
        })
    }
}

/// Waits (at most `limit`) for the ready file `path` of the `dimstore-server` `child`;
/// if the server exits first, the error is `exited(status)`. On failure the server is
/// stopped.
pub(crate) fn wait_ready(
    child: &mut Child,
    path: &Path,
    limit: Duration,
    exited: impl Fn(ExitStatus) -> anyhow::Error,
) -> anyhow::Result<ReadyFile> {
    let found = poll_until("dimstore-server ready file", limit, || {
        if let Some(status) = child.try_wait()? {
            return Err(exited(status));
        }
        let Ok(text) = std::fs::read(path) else {
            return Ok(None);
        };
        Ok(serde_json::from_slice::<ReadyFile>(&text).ok())
    });
    if found.is_err() {
        stop_child(child, Duration::from_secs(1));
    }
    found
}

impl Contender for DimstoreServer {
    fn kind(&self) -> ContenderKind {
        self.kind
    }

    fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for DimstoreServer {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(2));
    }
}

/// A `dimstore::Store` connected to the bench's server (never spawning one).
pub struct DimstoreClient {
    store: Store,
    loaded: Vec<Key>,
    put: Vec<Key>,
}

impl DimstoreClient {
    /// Connects to the server at `address`: over TCP like any other node
    /// ([`LocalMode::Off`]), or through the same-node path ([`LocalMode::Map`]: a Unix socket,
    /// gets map the server's memory).
    pub fn connect(address: &str, local: LocalMode) -> anyhow::Result<DimstoreClient> {
        let config = ClientConfig {
            local,
            timeout: Duration::from_secs(60),
            spawn: SpawnPolicy::Never,
            ..ClientConfig::default()
        };
        let store = Store::connect(address, config)
            .with_context(|| format!("cannot connect to dimstore at {address}"))?;
        Ok(DimstoreClient {
            store,
            loaded: Vec::new(),
            put: Vec::new(),
        })
    }
}

impl Client for DimstoreClient {
    fn load(&mut self, value: &[u8], count: usize) -> anyhow::Result<()> {
        if !self.loaded.is_empty() {
            self.store.evict_batch(&self.loaded)?;
            self.loaded.clear();
        }
        if count > 0 {
            let objects = vec![value; count];
            self.loaded = self.store.put_batch(&objects)?;
        }
        Ok(())
    }

    fn put(&mut self, value: &[u8]) -> anyhow::Result<()> {
        self.put.push(self.store.put(value)?);
        Ok(())
    }

    fn discard(&mut self) -> anyhow::Result<()> {
        if !self.put.is_empty() {
            self.store.evict_batch(&self.put)?;
            self.put.clear();
        }
        Ok(())
    }

    fn get(&mut self, index: usize) -> anyhow::Result<usize> {
        let key = &self.loaded[index % self.loaded.len()];
        let bytes = self.store.get(key)?;
        touch_pages(&bytes);
        ensure!(
            Some(bytes.len() as u64) == key.size,
            "dimstore returned {} bytes for a {:?}-byte object",
            bytes.len(),
            key.size
        );
        Ok(bytes.len())
    }

    fn get_batch(&mut self) -> anyhow::Result<usize> {
        let objects = self.store.get_batch(&self.loaded)?;
        objects
            .iter()
            .try_fold(0usize, |total, object| match object {
                Some(bytes) => {
                    touch_pages(bytes);
                    Ok(total + bytes.len())
                }
                None => bail!("dimstore lost a loaded object"),
            })
    }
}

/// Reads one byte of every 4 KiB page, so a get that maps the server's memory (same-node
/// path) pays for making the bytes usable, as a copy through a socket does.
pub(crate) fn touch_pages(bytes: &[u8]) {
    let sum: u64 = bytes.iter().step_by(4096).map(|&b| u64::from(b)).sum();
    std::hint::black_box(sum);
}
