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
use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

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

    fn connect(
        &self,
        address: &str,
        _deadline: Instant,
    ) -> Result<LocalConnection, TransportError> {
        let fail = |e: io::Error| TransportError::Connect {
            address: address.to_string(),
            reason: e.to_string(),
        };
        // A local connect either succeeds or fails at once: no deadline needed.
        let stream = UnixStream::connect(Path::new(address)).map_err(fail)?;
        let socket = UnixSocket {
            stream,
            fds: Arc::default(),
        };
        MuxConnection::new(socket, self.limits).map_err(fail)
    }
}
