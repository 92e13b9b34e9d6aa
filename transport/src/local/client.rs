//! The same-node client: a [`MuxConnection`] over a Unix socket that collects the
//! descriptors arriving with the stream's bytes.

use std::collections::VecDeque;
use std::io::{self, IoSliceMut, Read, Write};
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dimstore_proto::FrameLimits;
use rustix::io::{ioctl_fionbio, Errno};
use rustix::net::{
    connect_unix, recvmsg, socket_with, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage,
    RecvFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use super::MAX_FDS_PER_REPLY;
use crate::mux::{MuxConnection, Socket};
use crate::{Connector, TransportError};

/// A connection to this node's server.
pub type LocalConnection = MuxConnection<UnixSocket>;

/// A Unix stream whose reads keep the descriptors passed along with the bytes.
#[derive(Debug)]
pub struct UnixSocket {
    stream: UnixStream,
    fds: Arc<Mutex<VecDeque<OwnedFd>>>,
}

impl Read for UnixSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut space = [0u8; rustix::cmsg_space!(ScmRights(MAX_FDS_PER_REPLY))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = recvmsg(
            &self.stream,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut queue = self.fds.lock().unwrap_or_else(|e| e.into_inner());
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                queue.extend(fds);
            }
        }
        Ok(got.bytes)
    }
}

impl Write for UnixSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl Socket for UnixSocket {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(UnixSocket {
            stream: self.stream.try_clone()?,
            fds: Arc::clone(&self.fds),
        })
    }
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_write_timeout(timeout)
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.stream.shutdown(how)
    }
    fn take_fds(&self, n: usize) -> Vec<OwnedFd> {
        let mut queue = self.fds.lock().unwrap_or_else(|e| e.into_inner());
        let n = n.min(queue.len());
        queue.drain(..n).collect()
    }
}

/// Opens connections to a server's Unix socket (the "address" is the socket path).
#[derive(Debug, Clone, Default)]
pub struct LocalConnector {
    limits: FrameLimits,
}

impl Connector for LocalConnector {
    type Connection = LocalConnection;

    fn name(&self) -> &'static str {
        super::NAME
    }

    fn connect(&self, address: &str, deadline: Instant) -> Result<LocalConnection, TransportError> {
        let fail = |e: io::Error| TransportError::Connect {
            address: address.to_string(),
            source: e.into(),
        };
        let stream = connect_by(Path::new(address), deadline).map_err(|e| match e.kind() {
            io::ErrorKind::TimedOut => TransportError::Timeout,
            _ => fail(e),
        })?;
        let socket = UnixSocket {
            stream,
            fds: Arc::default(),
        };
        MuxConnection::new(socket, self.limits).map_err(fail)
    }
}

/// Longest sleep between connection attempts while the server's backlog is full.
const CONNECT_RETRY: Duration = Duration::from_millis(5);

/// Connects to the Unix socket at `path`, giving up at `deadline` (`TimedOut`): a connect
/// blocks while the server's backlog is full, as it stays when the server is stopped.
fn connect_by(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    let address = SocketAddrUnix::new(path)?;
    let socket = socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    loop {
        match connect_unix(&socket, &address) {
            Ok(()) => break,
            Err(Errno::AGAIN | Errno::INTR) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                std::thread::sleep(left.min(CONNECT_RETRY));
            }
            Err(e) => return Err(e.into()),
        }
    }
    ioctl_fionbio(&socket, false)?;
    Ok(UnixStream::from(socket))
}

#[cfg(test)]
mod tests {
    use rustix::net::{bind_unix, listen};

    use super::*;

    #[test]
    fn a_connect_to_a_server_that_accepts_nobody_ends_at_its_deadline() {
        let dir = std::env::temp_dir().join(format!("dimstore-local-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let path = dir.join("full.sock");
        let _ = std::fs::remove_file(&path);
        // A listener with the smallest backlog that never accepts (a stopped server).
        let listener = socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socket");
        bind_unix(&listener, &SocketAddrUnix::new(&path).expect("address")).expect("bind");
        listen(&listener, 0).expect("listen");
        let connector = LocalConnector::default();
        let address = path.to_str().expect("utf-8 path");
        let wait = Duration::from_millis(300);
        let mut queued = Vec::new();
        let outcome = loop {
            let started = Instant::now();
            match connector.connect(address, started + wait) {
                Ok(connection) if queued.len() < 16 => queued.push(connection),
                Ok(_) => panic!("the backlog never filled"),
                Err(e) => break (e, started.elapsed()),
            }
        };
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            matches!(outcome.0, TransportError::Timeout),
            "{:?}",
            outcome.0
        );
        assert!(
            outcome.1 < wait + Duration::from_secs(2),
            "took {:?}",
            outcome.1
        );
    }
}
