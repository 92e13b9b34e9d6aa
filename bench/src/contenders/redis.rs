//! redis: a `redis-server` started by the bench (no persistence), spoken to in RESP2 over a
//! plain `TcpStream` (SET, GET, MGET, DEL: a few dozen lines, no client library overhead).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure, Context};

use super::{
    find_program, free_port, poll_until, stop_child, Client, Contender, ContenderKind, ServerSetup,
};

/// Arguments up to this size are copied into the command buffer (one write per command).
const COALESCE: usize = 64 << 10;

/// A `redis-server` on a free loopback port.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    address: String,
}

impl RedisServer {
    /// Starts redis-server (see [`installed`] to check first).
    pub fn start(setup: &ServerSetup) -> anyhow::Result<RedisServer> {
        let port = free_port()?;
        let address = format!("127.0.0.1:{port}");
        let mut child = Command::new(&setup.redis_bin)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .args([
                "--proto-max-bulk-len",
                &format!("{}", (setup.max_object * 2).max(1 << 29)),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", setup.redis_bin.display()))?;
        let ready = poll_until("redis-server", Duration::from_secs(10), || {
            if let Some(status) = child.try_wait()? {
                bail!("redis-server exited ({status}) before it was ready");
            }
            Ok(RedisClient::connect(&address)
                .and_then(|mut c| c.ping())
                .ok())
        });
        if let Err(e) = ready {
            stop_child(&mut child, Duration::from_secs(1));
            return Err(e);
        }
        Ok(RedisServer { child, address })
    }
}

/// Whether `bin` names an executable file (directly or on `PATH`).
pub fn installed(bin: &Path) -> bool {
    find_program(bin).is_some()
}

impl Contender for RedisServer {
    fn kind(&self) -> ContenderKind {
        ContenderKind::Redis
    }

    fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(2));
    }
}

/// A reply, as far as the bench cares.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// `+OK`, `:1` and the like.
    Status,
    /// A bulk string's length (its bytes were read and dropped by the caller's buffer).
    Bulk(usize),
    /// An array of bulk strings: their total length.
    Array(usize),
}

/// One RESP2 connection.
#[derive(Debug)]
pub struct RedisClient {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    prefix: String,
    loaded: Vec<String>,
    object_size: usize,
    command: Vec<u8>,
    line: Vec<u8>,
}

impl RedisClient {
    /// Connects to redis at `address`.
    pub fn connect(address: &str) -> anyhow::Result<RedisClient> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let writer = TcpStream::connect(address)
            .with_context(|| format!("cannot connect to redis at {address}"))?;
        writer.set_nodelay(true)?;
        let reader = BufReader::with_capacity(COALESCE, writer.try_clone()?);
        let prefix = format!(
            "bench:{}:{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Ok(RedisClient {
            writer,
            reader,
            prefix,
            loaded: Vec::new(),
            object_size: 0,
            command: Vec::with_capacity(COALESCE + 256),
            line: Vec::with_capacity(64),
        })
    }

    fn ping(&mut self) -> anyhow::Result<()> {
        self.send(&[b"PING"])?;
        ensure!(self.reply()? == Reply::Status, "redis did not answer PING");
        Ok(())
    }

    /// Writes one command: an array of bulk strings.
    fn send(&mut self, args: &[&[u8]]) -> anyhow::Result<()> {
        self.command.clear();
        write!(self.command, "*{}\r\n", args.len())?;
        for arg in args {
            write!(self.command, "${}\r\n", arg.len())?;
            if arg.len() <= COALESCE {
                self.command.extend_from_slice(arg);
            } else {
                self.writer.write_all(&self.command)?;
                self.writer.write_all(arg)?;
                self.command.clear();
            }
            self.command.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&self.command)?;
        Ok(())
    }

    /// Reads one reply; bulk strings are read into fresh buffers (as a client library would
    /// hand them to the application) and dropped.
    fn reply(&mut self) -> anyhow::Result<Reply> {
        let line = self.read_line()?;
        let (kind, rest) = line.split_first().context("empty redis reply")?;
        let number =
            || -> anyhow::Result<i64> { Ok(std::str::from_utf8(rest)?.trim().parse::<i64>()?) };
        match kind {
            b'+' | b':' => Ok(Reply::Status),
            b'-' => bail!("redis error: {}", String::from_utf8_lossy(rest).trim()),
            b'$' => {
                let len = number()?;
                ensure!(len >= 0, "redis has no such key");
                Ok(Reply::Bulk(self.bulk(len as usize)?))
            }
            b'*' => {
                let count = number()?;
                let mut total = 0;
                for _ in 0..count.max(0) {
                    match self.reply()? {
                        Reply::Bulk(n) => total += n,
                        other => bail!("unexpected redis array element {other:?}"),
                    }
                }
                Ok(Reply::Array(total))
            }
            _ => bail!("malformed redis reply {:?}", String::from_utf8_lossy(&line)),
        }
    }

    fn bulk(&mut self, len: usize) -> anyhow::Result<usize> {
        let mut value = vec![0u8; len];
        self.reader.read_exact(&mut value)?;
        let mut crlf = [0u8; 2];
        self.reader.read_exact(&mut crlf)?;
        ensure!(&crlf == b"\r\n", "malformed redis bulk string");
        Ok(value.len())
    }

    fn read_line(&mut self) -> anyhow::Result<Vec<u8>> {
        self.line.clear();
        let n = self.reader.read_until(b'\n', &mut self.line)?;
        if n == 0 {
            return Err(std::io::Error::from(ErrorKind::UnexpectedEof).into());
        }
        ensure!(self.line.ends_with(b"\r\n"), "malformed redis reply line");
        Ok(self.line[..self.line.len() - 2].to_vec())
    }

    fn put_key(&self) -> String {
        format!("{}:put", self.prefix)
    }
}

impl Client for RedisClient {
    fn load(&mut self, value: &[u8], count: usize) -> anyhow::Result<()> {
        if !self.loaded.is_empty() {
            let keys = std::mem::take(&mut self.loaded);
            let mut args: Vec<&[u8]> = vec![b"DEL"];
            args.extend(keys.iter().map(|k| k.as_bytes()));
            self.send(&args)?;
            self.reply()?;
        }
        self.loaded = (0..count).map(|i| format!("{}:{i}", self.prefix)).collect();
        self.object_size = value.len();
        for key in self.loaded.clone() {
            self.send(&[b"SET", key.as_bytes(), value])?;
            self.reply()?;
        }
        Ok(())
    }

    fn put(&mut self, value: &[u8]) -> anyhow::Result<()> {
        let key = self.put_key();
        self.send(&[b"SET", key.as_bytes(), value])?;
        ensure!(self.reply()? == Reply::Status, "redis SET failed");
        Ok(())
    }

    fn discard(&mut self) -> anyhow::Result<()> {
        let key = self.put_key();
        self.send(&[b"DEL", key.as_bytes()])?;
        self.reply()?;
        Ok(())
    }

    fn get(&mut self, index: usize) -> anyhow::Result<usize> {
        let i = index % self.loaded.len();
        let key = std::mem::take(&mut self.loaded[i]);
        let sent = self.send(&[b"GET", key.as_bytes()]);
        self.loaded[i] = key;
        sent?;
        match self.reply()? {
            Reply::Bulk(n) if n == self.object_size => Ok(n),
            other => bail!("redis GET returned {other:?}"),
        }
    }

    fn get_batch(&mut self) -> anyhow::Result<usize> {
        let keys = std::mem::take(&mut self.loaded);
        let mut args: Vec<&[u8]> = Vec::with_capacity(keys.len() + 1);
        args.push(b"MGET");
        args.extend(keys.iter().map(|k| k.as_bytes()));
        let sent = self.send(&args);
        self.loaded = keys;
        sent?;
        match self.reply()? {
            Reply::Array(n) if n == self.object_size * self.loaded.len() => Ok(n),
            other => bail!("redis MGET returned {other:?}"),
        }
    }
}
