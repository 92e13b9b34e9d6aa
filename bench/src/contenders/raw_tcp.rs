//! Raw TCP: the limit. A server process (the bench itself, as `raw-server`) answers requests
//! with nothing on top of the socket: no serialisation, no allocation per request, no table,
//! one blocking thread per connection.
//!
//! Request: a 24-byte header `[send_len, reply_len, mode]` (little-endian u64s), then
//! `send_len` bytes. Reply: `reply_len` as 8 bytes, then `reply_len` bytes — written from one
//! reused buffer (`mode` 0) or as a stream of reused 1 MiB chunks (`mode` 1). A put sends N
//! bytes and gets an empty reply; a get asks for N bytes; a stream measures loopback
//! bandwidth without touching more memory than a chunk on either side.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context};

use super::{pattern, stop_child, this_program, Client, Contender, ContenderKind};

const HEADER: usize = 24;
const CHUNK: usize = 1 << 20;
/// Replies and requests up to this size go out in one write (as dimstore's transport does).
const COALESCE: usize = 64 << 10;
const MODE_BUFFER: u64 = 0;
const MODE_STREAM: u64 = 1;

/// The raw TCP server: a process of its own (this program's hidden `raw-server` command),
/// like the other contenders' servers, so every placement treats them alike.
#[derive(Debug)]
pub struct RawServer {
    child: Child,
    address: String,
}

impl RawServer {
    /// Starts the server process (it inherits the calling thread's CPU mask) and reads the
    /// address it listens on.
    pub fn start() -> anyhow::Result<RawServer> {
        let mut child = Command::new(this_program()?)
            .arg("raw-server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the raw TCP server process")?;
        let mut line = String::new();
        let read = match child.stdout.take() {
            Some(stdout) => BufReader::new(stdout).read_line(&mut line),
            None => Ok(0),
        };
        let address = line.trim().to_string();
        if read.is_err() || address.is_empty() {
            stop_child(&mut child, Duration::from_secs(1));
            bail!("the raw TCP server process did not report its address");
        }
        Ok(RawServer { child, address })
    }
}

/// Runs the raw TCP server in this process (the `raw-server` command): prints the address,
/// serves until standard input closes (the bench ended or dropped the server).
pub fn serve_process() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind loopback")?;
    println!("{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    std::thread::Builder::new()
        .name("raw-tcp-accept".into())
        .spawn(move || accept_loop(listener))?;
    let mut rest = Vec::new();
    std::io::stdin().lock().read_to_end(&mut rest)?;
    Ok(())
}

fn accept_loop(listener: TcpListener) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let spawned = std::thread::Builder::new()
            .name("raw-tcp-conn".into())
            .spawn(move || {
                // A client going away mid-request is not the server's business.
                let _ = serve(stream);
            });
        if spawned.is_err() {
            return;
        }
    }
}

fn serve(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(COALESCE, stream);
    let mut incoming = Vec::new();
    let mut outgoing: Vec<u8> = Vec::new();
    let mut small = Vec::with_capacity(8 + COALESCE);
    let chunk = pattern(CHUNK);
    loop {
        let mut header = [0u8; HEADER];
        match reader.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let [send_len, reply_len, mode] = decode(&header);
        let send_len = to_usize(send_len)?;
        let reply_len_usize = to_usize(reply_len)?;
        if incoming.len() < send_len {
            incoming.resize(send_len, 0);
        }
        reader.read_exact(&mut incoming[..send_len])?;
        let len_bytes = reply_len.to_le_bytes();
        if mode == MODE_STREAM {
            writer.write_all(&len_bytes)?;
            let mut left = reply_len_usize;
            while left > 0 {
                let n = left.min(CHUNK);
                writer.write_all(&chunk[..n])?;
                left -= n;
            }
        } else {
            if outgoing.len() < reply_len_usize {
                outgoing = pattern(reply_len_usize);
            }
            let reply = &outgoing[..reply_len_usize];
            if reply.len() <= COALESCE {
                small.clear();
                small.extend_from_slice(&len_bytes);
                small.extend_from_slice(reply);
                writer.write_all(&small)?;
            } else {
                writer.write_all(&len_bytes)?;
                writer.write_all(reply)?;
            }
        }
    }
}

fn decode(header: &[u8; HEADER]) -> [u64; 3] {
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&header[i * 8..i * 8 + 8]);
        u64::from_le_bytes(w)
    };
    [word(0), word(1), word(2)]
}

fn to_usize(n: u64) -> std::io::Result<usize> {
    usize::try_from(n).map_err(|_| std::io::Error::new(ErrorKind::InvalidData, "length too large"))
}

impl Contender for RawServer {
    fn kind(&self) -> ContenderKind {
        ContenderKind::RawTcp
    }

    fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        // Closing its stdin ends the server; connection threads die with the process.
        drop(self.child.stdin.take());
        stop_child(&mut self.child, Duration::from_secs(2));
    }
}

/// A raw TCP client: one connection, reused receive buffers.
#[derive(Debug)]
pub struct RawClient {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    object_size: usize,
    objects: usize,
    buffer: Vec<u8>,
    request: Vec<u8>,
}

impl RawClient {
    /// Connects to the raw server at `address`.
    pub fn connect(address: &str) -> anyhow::Result<RawClient> {
        let writer = TcpStream::connect(address)
            .with_context(|| format!("cannot connect to the raw TCP server at {address}"))?;
        writer.set_nodelay(true)?;
        let reader = BufReader::with_capacity(COALESCE, writer.try_clone()?);
        Ok(RawClient {
            writer,
            reader,
            object_size: 0,
            objects: 0,
            buffer: Vec::new(),
            request: Vec::with_capacity(HEADER + COALESCE),
        })
    }

    /// Sends a request and reads the reply length.
    fn call(&mut self, payload: &[u8], reply_len: u64, mode: u64) -> anyhow::Result<u64> {
        self.request.clear();
        for word in [payload.len() as u64, reply_len, mode] {
            self.request.extend_from_slice(&word.to_le_bytes());
        }
        if payload.len() <= COALESCE {
            self.request.extend_from_slice(payload);
            self.writer.write_all(&self.request)?;
        } else {
            self.writer.write_all(&self.request)?;
            self.writer.write_all(payload)?;
        }
        let mut len = [0u8; 8];
        self.reader.read_exact(&mut len)?;
        let len = u64::from_le_bytes(len);
        ensure!(
            len == reply_len,
            "raw server replied {len} bytes, not {reply_len}"
        );
        Ok(len)
    }

    /// Asks for `len` bytes and reads them into the reused buffer.
    fn fetch(&mut self, len: usize) -> anyhow::Result<usize> {
        self.call(&[], len as u64, MODE_BUFFER)?;
        if self.buffer.len() < len {
            self.buffer.resize(len, 0);
        }
        self.reader.read_exact(&mut self.buffer[..len])?;
        Ok(len)
    }
}

impl Client for RawClient {
    fn load(&mut self, value: &[u8], count: usize) -> anyhow::Result<()> {
        self.object_size = value.len();
        self.objects = count;
        Ok(())
    }

    fn put(&mut self, value: &[u8]) -> anyhow::Result<()> {
        self.call(value, 0, MODE_BUFFER)?;
        Ok(())
    }

    fn discard(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    fn get(&mut self, _index: usize) -> anyhow::Result<usize> {
        self.fetch(self.object_size)
    }

    fn get_batch(&mut self) -> anyhow::Result<usize> {
        self.fetch(self.object_size * self.objects)
    }

    fn stream(&mut self, len: u64) -> anyhow::Result<u64> {
        self.call(&[], len, MODE_STREAM)?;
        if self.buffer.len() < CHUNK {
            self.buffer.resize(CHUNK, 0);
        }
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            self.reader.read_exact(&mut self.buffer[..n])?;
            left -= n as u64;
        }
        Ok(len)
    }
}
