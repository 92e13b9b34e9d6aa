//! `--metrics-listen`: a minimal HTTP/1 endpoint answering `GET /metrics`.
//!
//! Bounded on purpose: a request head of at most [`MAX_HEAD`] bytes must arrive within
//! [`DEADLINE`], which also bounds writing the answer; at most [`MAX_SCRAPES`] connections
//! are served at once (more wait in the listen backlog); every connection is closed after
//! one answer. `GET /metrics` (any query string) answers 200 with the OpenMetrics text;
//! another path 404, another method 405, anything unparsable 400. There is no token:
//! the endpoint shows counts, sizes and latencies, never keys or data, and is off unless
//! asked for; bind it to loopback or a monitoring network.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Longest request head read.
pub const MAX_HEAD: usize = 8 << 10;

/// Time a connection has to send its head and take its answer.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Connections served at once.
pub const MAX_SCRAPES: usize = 16;

/// Content type of the answer (OpenMetrics 1.0 text).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `registry` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                tracing::debug!(error = %e, "metrics endpoint cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let _permit = permit;
            if tokio::time::timeout(DEADLINE, answer(stream, registry))
                .await
                .is_err()
            {
                tracing::debug!("metrics scrape cut at its deadline");
            }
        });
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, registry: Arc<Registry>) {
    let response = match read_head(&mut stream).await {
        Ok(head) => match route(&head) {
            Ok(()) => {
                match tokio::task::spawn_blocking(move || crate::openmetrics::render(&registry))
                    .await
                {
                    Ok(text) => ok(&text),
                    Err(_) => status(500, "Internal Server Error"),
                }
            }
            Err(refusal) => refusal,
        },
        Err(refusal) => refusal,
    };
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

/// The request head (up to the blank line), or the answer refusing it.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| status(400, "Bad Request"))?;
        if n == 0 {
            return Err(status(400, "Bad Request"));
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&head, b"\r\n\r\n").or_else(|| find(&head, b"\n\n")) {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(status(431, "Request Header Fields Too Large"));
        }
    }
}

/// Accepts `GET /metrics` only.
fn route(head: &[u8]) -> Result<(), Vec<u8>> {
    let bad = || status(400, "Bad Request");
    let text = std::str::from_utf8(head).map_err(|_| bad())?;
    let line = text.lines().next().ok_or_else(bad)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(bad());
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    match (method, path) {
        ("GET", "/metrics") => Ok(()),
        (_, "/metrics") => Err(status(405, "Method Not Allowed")),
        _ => Err(status(404, "Not Found")),
    }
}

fn ok(body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

fn status(code: u16, reason: &str) -> Vec<u8> {
    let body = format!("{code} {reason}\n");
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(answer: &[u8]) -> &str {
        std::str::from_utf8(&answer[9..12]).expect("status code")
    }

    #[test]
    fn only_get_metrics_is_routed() {
        assert!(route(b"GET /metrics HTTP/1.1\r\nHost: x").is_ok());
        assert!(route(b"GET /metrics?name[]=x HTTP/1.0").is_ok());
        for (head, expected) in [
            (&b"POST /metrics HTTP/1.1"[..], "405"),
            (b"GET / HTTP/1.1", "404"),
            (b"GET /metrics/x HTTP/1.1", "404"),
            (b"GET /metrics", "400"),
            (b"GET  /metrics HTTP/1.1", "400"),
            (b"\xff\xfe", "400"),
            (b"", "400"),
            (b"GET metrics HTTP/1.1", "400"),
            (b"GET /metrics SPDY/3", "400"),
        ] {
            assert_eq!(
                code(&route(head).expect_err("refused")),
                expected,
                "{head:?}"
            );
        }
    }
}
