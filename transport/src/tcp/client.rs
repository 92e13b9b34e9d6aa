//! The blocking TCP client: a [`MuxConnection`] over a `TcpStream`.

use std::io;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use dimstore_proto::FrameLimits;

use crate::mux::{MuxConnection, Socket};
use crate::{Connector, TransportError};

/// A TCP connection to one server, shared by all threads of a process.
pub type TcpConnection = MuxConnection<TcpStream>;

impl Socket for TcpStream {
    fn try_clone(&self) -> io::Result<Self> {
        TcpStream::try_clone(self)
    }
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, timeout)
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        TcpStream::shutdown(self, how)
    }
    fn peer_closed(&self) -> bool {
        use rustix::net::{recv, RecvFlags};
        let mut byte = [0u8; 1];
        match recv(self, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e != rustix::io::Errno::AGAIN && e != rustix::io::Errno::INTR,
        }
    }
}

/// Opens TCP connections.
#[derive(Debug, Clone, Default)]
pub struct TcpConnector {
    limits: FrameLimits,
}

impl TcpConnector {
    /// A connector whose connections accept replies within `limits`.
    pub fn new(limits: FrameLimits) -> Self {
        TcpConnector { limits }
    }
}

impl Connector for TcpConnector {
    type Connection = TcpConnection;

    fn name(&self) -> &'static str {
        super::NAME
    }

    fn connect(&self, address: &str, deadline: Instant) -> Result<TcpConnection, TransportError> {
        let fail = |e: std::io::Error| TransportError::Connect {
            address: address.to_string(),
            source: e.into(),
        };
        let addrs: Vec<_> = address.to_socket_addrs().map_err(fail)?.collect();
        let mut last =
            std::io::Error::new(std::io::ErrorKind::NotFound, "address resolved to nothing");
        for addr in addrs {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(TransportError::Timeout);
            }
            match TcpStream::connect_timeout(&addr, remaining) {
                Ok(stream) => {
                    stream.set_nodelay(true).map_err(fail)?;
                    return MuxConnection::new(stream, self.limits).map_err(fail);
                }
                Err(_) if Instant::now() >= deadline => return Err(TransportError::Timeout),
                Err(e) => last = e,
            }
        }
        Err(fail(last))
    }
}
