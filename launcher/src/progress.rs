//! Reporting fleet start-up: a progress bar on a terminal, plain lines otherwise.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use dimstore_proto::ReadyFile;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Told about each step of starting a fleet.
pub trait StartProgress {
    /// All servers were launched; waiting for them.
    fn launched(&mut self, count: usize);
    /// A node's server is ready.
    fn ready(&mut self, node: &str, ready: &ReadyFile);
    /// A node's server failed.
    fn failed(&mut self, node: &str, reason: &str);
    /// Start-up is over (successfully or not); `ready` of `total` servers are up.
    fn finish(&mut self, ready: usize, total: usize);
}

/// Picks the display: nothing when `quiet`, a bar when stderr is a terminal, lines otherwise.
pub fn for_stderr(quiet: bool) -> Box<dyn StartProgress> {
    if quiet {
        Box::new(Quiet)
    } else if std::io::stderr().is_terminal() {
        Box::new(Bar::new())
    } else {
        Box::new(Lines::new())
    }
}

/// Reports nothing.
#[derive(Debug, Default)]
pub struct Quiet;

impl StartProgress for Quiet {
    fn launched(&mut self, _: usize) {}
    fn ready(&mut self, _: &str, _: &ReadyFile) {}
    fn failed(&mut self, _: &str, _: &str) {}
    fn finish(&mut self, _: usize, _: usize) {}
}

/// One line on stderr per event, for logs and pipes.
#[derive(Debug)]
pub struct Lines {
    started: Instant,
}

impl Lines {
    /// Starts the clock.
    pub fn new() -> Lines {
        Lines {
            started: Instant::now(),
        }
    }

    fn line(&self, text: &str) {
        let _ = writeln!(std::io::stderr(), "dimstore-launch: {text}");
    }
}

impl Default for Lines {
    fn default() -> Self {
        Lines::new()
    }
}

impl StartProgress for Lines {
    fn launched(&mut self, count: usize) {
        self.line(&format!("started {count} servers, waiting for them"));
    }
    fn ready(&mut self, node: &str, ready: &ReadyFile) {
        self.line(&format!(
            "{node} ready at {} (pid {})",
            ready.address, ready.pid
        ));
    }
    fn failed(&mut self, node: &str, reason: &str) {
        self.line(&format!("{node} failed: {reason}"));
    }
    fn finish(&mut self, ready: usize, total: usize) {
        self.line(&format!(
            "{ready} of {total} servers ready after {}",
            elapsed(self.started)
        ));
    }
}

/// A progress bar on stderr.
#[derive(Debug)]
pub struct Bar {
    bar: ProgressBar,
    started: Instant,
}

impl Bar {
    /// A bar drawing to stderr.
    pub fn new() -> Bar {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} starting dimstore servers {pos}/{len} [{elapsed}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Bar {
            bar,
            started: Instant::now(),
        }
    }
}

impl Default for Bar {
    fn default() -> Self {
        Bar::new()
    }
}

impl StartProgress for Bar {
    fn launched(&mut self, count: usize) {
        self.bar.set_length(count as u64);
        self.bar.enable_steady_tick(Duration::from_millis(100));
    }
    fn ready(&mut self, node: &str, ready: &ReadyFile) {
        self.bar.inc(1);
        self.bar.set_message(format!("{node} at {}", ready.address));
    }
    fn failed(&mut self, node: &str, reason: &str) {
        self.bar.println(format!("{node} failed: {reason}"));
    }
    fn finish(&mut self, ready: usize, total: usize) {
        self.bar.finish_and_clear();
        let _ = writeln!(
            std::io::stderr(),
            "dimstore-launch: {ready} of {total} servers ready after {}",
            elapsed(self.started)
        );
    }
}

fn elapsed(since: Instant) -> String {
    format!("{:.2}s", since.elapsed().as_secs_f64())
}
