//! The measurements of one row: dimstore's gets between two servers (part 1), then the
//! raw tools of the row's transport (part 2). Each fills the row's cells and notes why a
//! part was skipped or failed.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::procs::Proc;
use super::tools::{self, tool_iterations, Tool};
use super::{fi_read, get, ucx_get, Cell, Plan, RowResult, Variant};
use crate::contenders::{pattern, raw_tcp, this_program, Client, Contender};
use crate::measure::{timed_loop, Bounds};
use crate::options::human_size;

/// Bytes each external tool run moves, about (bounds its iteration count).
const TOOL_BUDGET: u64 = 512 << 20;
/// Longest time one external tool run (server and client) may take.
const TOOL_LIMIT: Duration = Duration::from_secs(60);

/// Part 1: two servers and the `rdma-get` client process.
pub(super) fn dimstore_part(plan: &Plan, row: &mut RowResult) -> anyhow::Result<()> {
    let variant = row.variant;
    let env = variant.env();
    let largest = plan.sizes.iter().copied().max().unwrap_or(8);
    let one_sided = (variant != Variant::Tcp).then(|| variant.transport());
    let start = |node: &str| {
        get::RowServer::start(
            &plan.server_bin,
            node,
            one_sided,
            &env,
            largest,
            Some(plan.server_threads),
        )
    };
    let home = start("rdma-bench-a")?;
    let owner = start("rdma-bench-b")?;
    let mut command = Command::new(this_program()?);
    command
        .arg("rdma-get")
        .arg("--home")
        .arg(&home.ready.address)
        .arg("--remote")
        .arg(&owner.ready.address)
        .arg("--node")
        .arg(&home.ready.node)
        .arg("--stats-row")
        .arg(variant.transport())
        .arg("--sizes")
        .arg(join(&plan.sizes))
        .arg("--cell-time")
        .arg(format!("{}ms", plan.cell_time.as_millis()))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("DIMSTORE_TRANSPORT", variant.transport())
        .env("DIMSTORE_ONE_SIDED_FROM", plan.one_sided_from.to_string())
        .env_remove("DIMSTORE_NODE")
        .env_remove("DIMSTORE_LOCAL");
    let mut client = Proc::spawn(format!("rdma-get ({})", variant.name()), command)?;
    for &size in &plan.sizes {
        let deadline = get::size_deadline(plan.cell_time, size);
        let result: Option<get::GetResult> = next_json(&mut client, deadline, row)?;
        let Some(result) = result else {
            let (status, _) = client.finish(Instant::now() + Duration::from_secs(5))?;
            anyhow::bail!(
                "the client process ended ({status}) before {}{}{}",
                human_size(size),
                client.stderr_tail(),
                server_logs(&home, &owner)
            );
        };
        eprintln!(
            "rdma {}: get {} median {:.1} us{}",
            variant.name(),
            human_size(result.size),
            result.median_us,
            if result.one_sided_bytes > 0 {
                " (one-sided)"
            } else {
                ""
            }
        );
        let cell = row.at(result.size);
        cell.get = Some(Cell::of_median(result.size, result.median_us));
        cell.get_p99_us = Some(result.p99_us);
        cell.one_sided = Some(result.one_sided_bytes > 0);
    }
    let (status, _) = client.finish(Instant::now() + Duration::from_secs(30))?;
    anyhow::ensure!(
        status.success(),
        "the client process failed ({status}){}",
        client.stderr_tail()
    );
    if variant != Variant::Tcp
        && row
            .sizes
            .iter()
            .any(|s| s.size >= plan.one_sided_from && s.one_sided == Some(false))
    {
        row.note(format!(
            "some gets of {} and more were NOT one-sided (the owner counted no one-sided \
             bytes): they fell back to inline TCP",
            human_size(plan.one_sided_from)
        ));
    }
    Ok(())
}

fn server_logs(a: &get::RowServer, b: &get::RowServer) -> String {
    let mut out = String::new();
    for s in [a, b] {
        let log = s.log();
        if !log.trim().is_empty() {
            let _ = write!(
                out,
                "\n  {} log ({}):\n    {}",
                s.ready.node,
                s.log_path().display(),
                log.trim().lines().collect::<Vec<_>>().join("\n    ")
            );
        }
    }
    out
}

fn join(sizes: &[u64]) -> String {
    sizes
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Part 2: the raw tools of the row's transport.
pub(super) fn raw_part(plan: &Plan, row: &mut RowResult) {
    match row.variant {
        Variant::Ucx | Variant::UcxShm => {
            raw_ucx(plan, row);
            raw_ucx_own(plan, row);
        }
        Variant::OfiTcp | Variant::OfiShm => raw_ofi(plan, row),
        Variant::Tcp => {
            if let Err(e) = raw_tcp_part(plan, row) {
                row.note(format!("raw TCP: {e:#}"));
            }
        }
    }
}

fn raw_ucx(plan: &Plan, row: &mut RowResult) {
    let program = match tools::missing("ucx_perftest", "ucx-utils") {
        Ok(p) => p,
        Err(why) => return row.note(format!("raw UCX columns skipped: {why}")),
    };
    let tool = Tool::new(program, row.variant.env(), TOOL_LIMIT);
    for &size in &plan.sizes {
        let n = tool_iterations(size, TOOL_BUDGET);
        eprintln!(
            "rdma {}: ucx_perftest {} (n={n})",
            row.variant.name(),
            human_size(size)
        );
        match tool.perftest("ucp_get", size, n) {
            Ok(r) => row.at(size).read = Some(r.into()),
            Err(e) => row.note(format!("ucx_perftest ucp_get {}: {e:#}", human_size(size))),
        }
        match tool.perftest("tag_lat", size, n) {
            Ok(r) => row.at(size).rtt = Some(r.into()),
            Err(e) => row.note(format!("ucx_perftest tag_lat {}: {e:#}", human_size(size))),
        }
    }
}

fn raw_ucx_own(plan: &Plan, row: &mut RowResult) {
    eprintln!("rdma {}: ucp_get (ours)", row.variant.name());
    if let Err(e) = raw_own_read(plan, row, Own::Ucx) {
        row.note(format!("ucp_get (ours): {e:#}"));
    }
}

fn raw_ofi(plan: &Plan, row: &mut RowResult) {
    let provider = row.variant.provider().unwrap_or("tcp;ofi_rxm");
    match tools::missing("fi_pingpong", "libfabric-bin") {
        Err(why) => row.note(format!("raw round trip skipped: {why}")),
        Ok(program) => {
            let tool = Tool::new(program, row.variant.env(), TOOL_LIMIT);
            for &size in &plan.sizes {
                let n = tool_iterations(size, TOOL_BUDGET);
                eprintln!(
                    "rdma {}: fi_pingpong {} (n={n})",
                    row.variant.name(),
                    human_size(size)
                );
                match tool.pingpong(provider, size, n) {
                    Ok(r) => row.at(size).rtt = Some(r.into()),
                    Err(e) => row.note(format!("fi_pingpong {}: {e:#}", human_size(size))),
                }
            }
        }
    }
    eprintln!("rdma {}: fi_read (ours)", row.variant.name());
    if let Err(e) = raw_own_read(plan, row, Own::Ofi(provider)) {
        row.note(format!("fi_read: {e:#}"));
    }
}

/// Whose own one-sided read tool to run.
#[derive(Debug, Clone, Copy)]
enum Own<'a> {
    /// Our fi_read over `dimstore-ofi`, on this provider.
    Ofi(&'a str),
    /// Our ucp_get over `dimstore-ucx` (the row's `UCX_*` environment).
    Ucx,
}

/// Our own one-sided read: a target process and an initiator process (hidden subcommands).
fn raw_own_read(plan: &Plan, row: &mut RowResult, own: Own<'_>) -> anyhow::Result<()> {
    let largest = plan.sizes.iter().copied().max().unwrap_or(8);
    let env = row.variant.env();
    let node = match own {
        Own::Ofi(provider) if provider.contains("tcp") => Some("127.0.0.1"),
        _ => None,
    };
    let program = this_program()?;
    let base_command = |sub: &str| {
        let mut command = Command::new(&program);
        command.arg(sub).envs(env.iter().map(|(k, v)| (k, v)));
        if let (Some(node), Own::Ofi(provider)) = (node, own) {
            command
                .arg("--provider")
                .arg(provider)
                .arg("--node")
                .arg(node);
        } else if let Own::Ofi(provider) = own {
            command.arg("--provider").arg(provider);
        }
        command
    };
    let (target_sub, reader_sub, tool) = match own {
        Own::Ofi(_) => ("rdma-fi-target", "rdma-fi-read", "fi_read"),
        Own::Ucx => ("rdma-ucx-target", "rdma-ucx-get", "ucp_get"),
    };
    let mut command = base_command(target_sub);
    command.arg("--size").arg(largest.to_string());
    let mut target = Proc::spawn(format!("{tool} target"), command)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut command = base_command(reader_sub);
    match own {
        Own::Ofi(_) => {
            let info: fi_read::TargetInfo = next_json(&mut target, deadline, row)?
                .with_context(|| format!("the target process ended{}", target.stderr_tail()))?;
            command
                .arg("--name")
                .arg(&info.name)
                .arg("--key")
                .arg(info.key.to_string())
                .arg("--base")
                .arg(info.base.to_string());
        }
        Own::Ucx => {
            let info: ucx_get::UcxTargetInfo = next_json(&mut target, deadline, row)?
                .with_context(|| format!("the target process ended{}", target.stderr_tail()))?;
            command
                .arg("--address")
                .arg(&info.address)
                .arg("--rkey")
                .arg(&info.rkey)
                .arg("--base")
                .arg(info.base.to_string());
        }
    }
    command
        .arg("--sizes")
        .arg(join(&plan.sizes))
        .arg("--cell-time")
        .arg(format!("{}ms", plan.cell_time.as_millis()));
    let mut reader = Proc::spawn(format!("{tool} initiator"), command)?;
    let mut best: Vec<fi_read::ReadResult> = Vec::new();
    loop {
        let deadline = get::size_deadline(plan.cell_time, largest);
        let Some(r) = next_json::<fi_read::ReadResult>(&mut reader, deadline, row)? else {
            break;
        };
        eprintln!(
            "rdma {}: {tool} {} {} median {:.1} us",
            row.variant.name(),
            human_size(r.size),
            r.strategy,
            r.median_us
        );
        match best.iter_mut().find(|b| b.size == r.size) {
            Some(b) if r.median_us < b.median_us => *b = r,
            Some(_) => {}
            None => best.push(r),
        }
    }
    let (status, _) = reader.finish(Instant::now() + Duration::from_secs(10))?;
    for r in best {
        let cell = row.at(r.size);
        let value = Some(Cell::of_median(r.size, r.median_us));
        match own {
            Own::Ofi(_) => cell.read = value,
            Own::Ucx => cell.own_read = value,
        }
        cell.read_note = Some(r.strategy);
    }
    anyhow::ensure!(
        status.success(),
        "the initiator failed ({status}){}{}",
        reader.stderr_tail(),
        target.stderr_tail()
    );
    Ok(())
}

/// The next JSON line of `proc` (other lines, e.g. UCX's log on stdout, are shown and the
/// first few errors among them noted); `None` at the end of its output.
fn next_json<T: serde::de::DeserializeOwned>(
    proc: &mut Proc,
    deadline: Instant,
    row: &mut RowResult,
) -> anyhow::Result<Option<T>> {
    while let Some(line) = proc.next_line(deadline)? {
        if line.trim_start().starts_with('{') {
            return serde_json::from_str(&line)
                .map(Some)
                .with_context(|| format!("unexpected output: {line}"));
        }
        eprintln!("rdma {}: | {line}", row.variant.name());
        // UCX logs to stdout, each line stamped: note each distinct error once.
        if let Some(at) = line.find("ERROR") {
            let text = format!("a child process logged: {}", line[at..].trim());
            let noted = row
                .notes
                .iter()
                .filter(|n| n.starts_with("a child"))
                .count();
            if noted < 3 && !row.notes.contains(&text) {
                row.notes.push(text);
            }
        }
    }
    Ok(None)
}

/// The tcp row's raw references: the raw TCP request/reply (round trip) and one-way stream.
fn raw_tcp_part(plan: &Plan, row: &mut RowResult) -> anyhow::Result<()> {
    let server = raw_tcp::RawServer::start()?;
    let mut client = raw_tcp::RawClient::connect(server.address())?;
    let largest = plan.sizes.iter().copied().max().unwrap_or(8);
    let value = pattern(usize::try_from(largest)?);
    for &size in &plan.sizes {
        eprintln!("rdma tcp: raw TCP {}", human_size(size));
        let bounds = Bounds {
            warmup: 2,
            iterations: get::iterations(size),
            time: plan.cell_time,
        };
        client.load(&value[..size as usize], 1)?;
        let get = timed_loop(bounds, |_| client.get(0).map(drop), || Ok(()))?;
        client.load(&[], 0)?;
        let stream = timed_loop(bounds, |_| client.stream(size).map(drop), || Ok(()))?;
        let cell = row.at(size);
        cell.rtt = Some(Cell::of_median(size, get.median_us()));
        cell.read = Some(Cell::of_median(size, stream.median_us()));
    }
    Ok(())
}
