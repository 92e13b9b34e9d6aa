//! The raw transports' own tools: `ucx_perftest` (UCX: `ucp_get` one-sided reads and
//! `tag_lat` round trips) and `fi_pingpong` (libfabric: message round trips), each run as a
//! server and a client process on 127.0.0.1, with the row's environment, under a deadline.
//!
//! Units, as the tools print them:
//! - `ucx_perftest -v` prints CSV rows `iterations,50.0_percentile_lat,avg_lat,overall_lat,
//!   avg_bw,overall_bw,avg_mr,overall_mr`; latencies in us, bandwidth in MiB/s. `tag_lat`
//!   latencies are one-way (half a round trip). `ucp_get` keeps many reads in flight: its
//!   latency column is the time per read at that rate, not the latency of a lone read.
//! - `fi_pingpong` prints `bytes #sent #ack total time MB/sec usec/xfer Mxfers/sec`;
//!   `usec/xfer` is one-way (half a round trip), `MB/sec` in 10^6 bytes.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::procs::{bounded_command, control_port, Proc};

/// How many times a client is started again while its server is not listening yet.
const CONNECT_ATTEMPTS: usize = 40;

/// What one tool run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ToolResult {
    /// Microseconds per operation: a round trip for `tag_lat` / `fi_pingpong`, one read at
    /// the tool's rate for `ucp_get`.
    pub us: f64,
    /// Bandwidth, 10^6 bytes per second.
    pub mb_per_s: f64,
}

/// Parses the final CSV row of `ucx_perftest -v`: (median latency us, overall latency us,
/// overall bandwidth MB/s (10^6)).
pub fn parse_perftest(lines: &[String]) -> Option<(f64, f64, f64)> {
    lines.iter().rev().find_map(|line| {
        let fields: Vec<&str> = line.trim().split(',').map(str::trim).collect();
        if fields.len() < 8 || !fields[0].chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let num = |i: usize| fields[i].parse::<f64>().ok();
        Some((num(1)?, num(3)?, num(5)? * 1.048_576))
    })
}

/// Parses `fi_pingpong`'s result line: (one-way us per transfer, MB/s (10^6)).
pub fn parse_pingpong(lines: &[String]) -> Option<(f64, f64)> {
    let header = lines
        .iter()
        .position(|l| l.trim_start().starts_with("bytes") && l.contains("usec/xfer"))?;
    lines[header + 1..].iter().find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 8 {
            return None;
        }
        Some((cols[6].parse().ok()?, cols[5].parse().ok()?))
    })
}

/// Iterations of a tool run for `size`: about `budget` bytes moved, within [5, 2000].
pub fn tool_iterations(size: u64, budget: u64) -> u64 {
    (budget / size.max(1)).clamp(5, 2000)
}

/// `ucx_perftest` or `fi_pingpong` and how to run them.
#[derive(Debug, Clone)]
pub struct Tool {
    program: PathBuf,
    /// The row's environment (UCX_TLS, ...).
    env: Vec<(String, String)>,
    /// Longest time one server + client pair may take.
    limit: Duration,
}

impl Tool {
    /// `program` (found in `PATH`) with `env`; every run stopped after `limit`.
    pub fn new(program: PathBuf, env: Vec<(String, String)>, limit: Duration) -> Tool {
        Tool {
            program,
            env,
            limit,
        }
    }

    fn command(&self, args: &[String]) -> Command {
        let mut command = bounded_command(&self.program, self.limit);
        command.args(args);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Runs a server (`server_args`) and then a client (`client_args`); the client is
    /// started again while the server is not listening yet. Returns the client's stdout.
    fn pair(&self, server_args: &[String], client_args: &[String]) -> anyhow::Result<Vec<String>> {
        let name = self
            .program
            .file_name()
            .map_or_else(|| "tool".into(), |n| n.to_string_lossy().into_owned());
        let deadline = Instant::now() + self.limit;
        let mut server = Proc::spawn(format!("{name} server"), self.command(server_args))?;
        std::thread::sleep(Duration::from_millis(50));
        for attempt in 1.. {
            let mut client = Proc::spawn(format!("{name} client"), self.command(client_args))?;
            let (status, lines) = client.finish(deadline)?;
            if status.success() {
                // The server ends by itself after the test; stop it otherwise.
                let _ = server.finish(Instant::now() + Duration::from_secs(2));
                return Ok(lines);
            }
            let why = client.stderr_tail();
            let refused = why.contains("refused") || lines.iter().any(|l| l.contains("refused"));
            if refused && attempt < CONNECT_ATTEMPTS && !server.exited() {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let server_why = server.stderr_tail();
            bail!(
                "{name} client {} ({status}){why}{}{server_why}",
                client_args.join(" "),
                if server_why.is_empty() {
                    ""
                } else {
                    "\n  server"
                }
            );
        }
        unreachable!("the loop returns or fails")
    }

    /// `ucx_perftest -t TEST -s SIZE -n N`: `tag_lat` gives a round trip (twice the
    /// one-way median), `ucp_get` the time per read and the bandwidth.
    pub fn perftest(&self, test: &str, size: u64, iterations: u64) -> anyhow::Result<ToolResult> {
        let port = control_port()?.to_string();
        let warmup = (iterations / 10).clamp(2, 1000).to_string();
        let common = |mut v: Vec<String>| {
            v.extend(["-p".into(), port.clone()]);
            v
        };
        let server = common(vec![]);
        let client = common(vec![
            "127.0.0.1".into(),
            "-t".into(),
            test.into(),
            "-s".into(),
            size.to_string(),
            "-n".into(),
            iterations.to_string(),
            "-w".into(),
            warmup,
            "-v".into(),
        ]);
        let lines = self.pair(&server, &client)?;
        let (p50, overall, mb_per_s) = parse_perftest(&lines)
            .with_context(|| format!("no result in ucx_perftest's output: {lines:?}"))?;
        Ok(if test == "tag_lat" {
            ToolResult {
                us: 2.0 * p50,
                mb_per_s,
            }
        } else {
            ToolResult {
                us: overall,
                mb_per_s,
            }
        })
    }

    /// `fi_pingpong -p PROVIDER -e rdm -S SIZE -I N`: a round trip (twice the one-way time
    /// per transfer).
    pub fn pingpong(
        &self,
        provider: &str,
        size: u64,
        iterations: u64,
    ) -> anyhow::Result<ToolResult> {
        let port = control_port()?.to_string();
        let common = vec![
            "-p".to_string(),
            provider.to_string(),
            "-e".into(),
            "rdm".into(),
            "-I".into(),
            iterations.to_string(),
            "-S".into(),
            size.to_string(),
        ];
        let mut server = common.clone();
        server.extend(["-B".into(), port.clone()]);
        let mut client = common;
        client.extend(["-P".into(), port, "127.0.0.1".into()]);
        let lines = self.pair(&server, &client)?;
        let (one_way, mb_per_s) = parse_pingpong(&lines)
            .with_context(|| format!("no result in fi_pingpong's output: {lines:?}"))?;
        Ok(ToolResult {
            us: 2.0 * one_way,
            mb_per_s,
        })
    }
}

/// Why `program` cannot be used, if it cannot (with the package that installs it).
pub fn missing(program: &str, package: &str) -> Result<PathBuf, String> {
    crate::contenders::find_program(program)
        .ok_or_else(|| format!("{program} not found in PATH (Debian: apt-get install {package})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn perftest_final_row() {
        let out = lines(
            "iterations,50.0_percentile_lat,avg_lat,overall_lat,avg_bw,overall_bw,avg_mr,overall_mr\n\
             [thread 0] 950,1077.429,1055.231,1055.231,0.01,0.01,948,948\n\
             \x20200,37.352,42.045,42.045,23783.98,23783.98,23784,23784\n",
        );
        let (p50, overall, bw) = parse_perftest(&out).expect("parsed");
        assert_eq!((p50, overall), (37.352, 42.045));
        assert!((bw - 23783.98 * 1.048576).abs() < 1e-6);
        assert_eq!(parse_perftest(&lines("Waiting for connection...")), None);
    }

    #[test]
    fn pingpong_result_line() {
        let out = lines(
            "bytes   #sent   #ack     total       time     MB/sec    usec/xfer   Mxfers/sec\n\
             8       1k      =1k      15k         0.03s      0.56      14.21       0.07\n",
        );
        assert_eq!(parse_pingpong(&out), Some((14.21, 0.56)));
        assert_eq!(parse_pingpong(&lines("failed to connect")), None);
    }

    #[test]
    fn iterations_are_bounded() {
        assert_eq!(tool_iterations(8, 512 << 20), 2000);
        assert_eq!(tool_iterations(128 << 20, 512 << 20), 5);
        assert_eq!(tool_iterations(1 << 20, 512 << 20), 512);
    }
}
