//! Results: CSV rows, side-by-side tables of ratios, and the verdict on the targets.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::contenders::{ContenderKind, Op};
use crate::measure::Latencies;
use crate::options::human_size;
use crate::placement::Placement;

/// The CSV header.
pub const CSV_HEADER: &str =
    "placement,contender,op,size_bytes,clients,median_us,p99_us,ops_per_s,mb_per_s";

/// Which part of the benchmark a row comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// One client, one operation at a time.
    Latency,
    /// Several client processes at once.
    Throughput,
}

/// One measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Which part of the benchmark measured it (not in the CSV: `clients` and `op` tell).
    pub part: Part,
    /// CPU placement.
    pub placement: Placement,
    /// System measured.
    pub contender: ContenderKind,
    /// Operation.
    pub op: Op,
    /// Object size.
    pub size_bytes: u64,
    /// Client processes (1 for latency).
    pub clients: usize,
    /// Median round-trip time, us.
    pub median_us: f64,
    /// 99th percentile round-trip time, us.
    pub p99_us: f64,
    /// Objects per second (latency: one client, back to back; throughput: all clients).
    pub ops_per_s: f64,
    /// Object megabytes (10^6 bytes) per second.
    pub mb_per_s: f64,
}

impl Row {
    /// A latency measurement: one client, operations back to back.
    pub fn latency(
        placement: Placement,
        contender: ContenderKind,
        op: Op,
        size: u64,
        latencies: &Latencies,
    ) -> Row {
        let rate = latencies.rate();
        Row {
            part: Part::Latency,
            placement,
            contender,
            op,
            size_bytes: size,
            clients: 1,
            median_us: latencies.median_us(),
            p99_us: latencies.p99_us(),
            ops_per_s: rate,
            mb_per_s: rate * size as f64 / 1e6,
        }
    }

    /// A throughput measurement: `rate` objects/s over all `clients`.
    pub fn throughput(
        placement: Placement,
        contender: ContenderKind,
        op: Op,
        size: u64,
        clients: usize,
        latencies: &Latencies,
        rate: f64,
    ) -> Row {
        Row {
            part: Part::Throughput,
            placement,
            contender,
            op,
            size_bytes: size,
            clients,
            median_us: latencies.median_us(),
            p99_us: latencies.p99_us(),
            ops_per_s: rate,
            mb_per_s: rate * size as f64 / 1e6,
        }
    }

    /// The row as a CSV line (no newline).
    pub fn csv(&self) -> String {
        format!(
            "{},{},{},{},{},{:.3},{:.3},{:.1},{:.3}",
            self.placement.name(),
            self.contender.name(),
            self.op.name(),
            self.size_bytes,
            self.clients,
            self.median_us,
            self.p99_us,
            self.ops_per_s,
            self.mb_per_s
        )
    }
}

/// Writes `rows` as CSV to `path`.
pub fn write_csv(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let mut text = String::from(CSV_HEADER);
    text.push('\n');
    for row in rows {
        text.push_str(&row.csv());
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The targets of the issue, reported (never asserted).
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Placement.
    pub placement: Placement,
    /// The dimstore contender judged.
    pub contender: ContenderKind,
    /// What is compared.
    pub what: String,
    /// Measured ratio.
    pub ratio: f64,
    /// The target, as text.
    pub target: &'static str,
    /// Whether the target is met.
    pub met: bool,
}

/// Finds one row.
fn find(
    rows: &[Row],
    part: Part,
    placement: Placement,
    contender: ContenderKind,
    op: Op,
    size: u64,
    clients: usize,
) -> Option<&Row> {
    rows.iter().find(|r| {
        r.part == part
            && r.placement == placement
            && r.contender == contender
            && r.op == op
            && r.size_bytes == size
            && r.clients == clients
    })
}

/// The dimstore contenders targets are evaluated for.
const DIMSTORES: [ContenderKind; 2] = [ContenderKind::Dimstore, ContenderKind::DimstoreLocal];

/// Evaluates the targets on `rows` for every placement and dimstore contender present.
pub fn verdicts(rows: &[Row]) -> Vec<Verdict> {
    let mut out = Vec::new();
    for placement in placements(rows) {
        for dim in DIMSTORES {
            verdicts_of(rows, placement, dim, &mut out);
        }
    }
    out
}

fn verdicts_of(rows: &[Row], placement: Placement, dim: ContenderKind, out: &mut Vec<Verdict>) {
    use ContenderKind::{RawTcp, Redis};
    let latency = |r: &&Row| r.part == Part::Latency && r.placement == placement;
    let smallest = rows
        .iter()
        .filter(latency)
        .filter(|r| r.op == Op::Get)
        .map(|r| r.size_bytes)
        .min();
    let streamed = rows
        .iter()
        .filter(latency)
        .filter(|r| r.op == Op::Stream)
        .map(|r| r.size_bytes)
        .max();
    let mut push = |what: String, ratio: f64, target: &'static str, met: bool| {
        out.push(Verdict {
            placement,
            contender: dim,
            what,
            ratio,
            target,
            met,
        })
    };
    if let Some(size) = smallest {
        let ours = find(rows, Part::Latency, placement, dim, Op::Get, size, 1);
        let raw = find(rows, Part::Latency, placement, RawTcp, Op::Get, size, 1);
        if let (Some(ours), Some(raw)) = (ours, raw) {
            let ratio = ours.median_us / raw.median_us;
            let what = format!("get {} median vs raw TCP round trip", human_size(size));
            push(what, ratio, "<= 2x", ratio <= 2.0);
        }
    }
    let throughput = rows
        .iter()
        .filter(|r| r.part == Part::Throughput && r.placement == placement && r.contender == dim);
    for ours in throughput {
        let (op, size, clients) = (ours.op, ours.size_bytes, ours.clients);
        if let Some(redis) = find(rows, Part::Throughput, placement, Redis, op, size, clients) {
            let ratio = ours.ops_per_s / redis.ops_per_s;
            let peer = if op == Op::Get { "GET" } else { "MGET" };
            let what = format!(
                "{} {} per client vs redis {peer}, {clients} client(s)",
                human_size(size),
                op.name(),
            );
            push(what, ratio, ">= 3x", ratio >= 3.0);
        }
    }
    if let Some(size) = streamed {
        let ours = find(rows, Part::Latency, placement, dim, Op::Get, size, 1);
        let stream = find(rows, Part::Latency, placement, RawTcp, Op::Stream, size, 1);
        if let (Some(ours), Some(stream)) = (ours, stream) {
            let ratio = ours.mb_per_s / stream.mb_per_s;
            let what = format!("get {} bandwidth vs loopback TCP stream", human_size(size));
            push(what, ratio, ">= 0.70", ratio >= 0.7);
        }
    }
}

/// Placements present in `rows`, in first-seen order.
fn placements(rows: &[Row]) -> Vec<Placement> {
    let mut seen = Vec::new();
    for r in rows {
        if !seen.contains(&r.placement) {
            seen.push(r.placement);
        }
    }
    seen
}

/// The whole report as text: per placement, latency and throughput side by side with
/// ratios, the bandwidth comparison, then the targets.
pub fn render(rows: &[Row], headers: &[(Placement, String)]) -> String {
    let mut out = String::new();
    for (placement, header) in headers {
        let _ = writeln!(out, "\n=== placement {header} ===");
        let of = |part| -> Vec<&Row> {
            rows.iter()
                .filter(|r| r.placement == *placement && r.part == part)
                .collect()
        };
        let lat = of(Part::Latency);
        if !lat.is_empty() {
            render_latency(&mut out, &lat);
        }
        let thr = of(Part::Throughput);
        if !thr.is_empty() {
            render_throughput(&mut out, &thr);
        }
    }
    render_verdicts(&mut out, &verdicts(rows));
    out
}

fn kinds_in(rows: &[&Row]) -> Vec<ContenderKind> {
    ContenderKind::ALL
        .into_iter()
        .filter(|k| rows.iter().any(|r| r.contender == *k))
        .collect()
}

fn cell(row: Option<&Row>) -> String {
    row.map_or_else(
        || "-".to_string(),
        |r| format!("{:.1} / {:.1}", r.median_us, r.p99_us),
    )
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

fn render_latency(out: &mut String, rows: &[&Row]) {
    let kinds = kinds_in(rows);
    let _ = writeln!(
        out,
        "\nLatency, one client: median / p99 in us; ratios of medians"
    );
    let mut head = format!("{:<9} {:<4}", "size", "op");
    for k in &kinds {
        let _ = write!(head, " {:>21}", k.name());
    }
    let _ = write!(
        head,
        " {:>8} {:>9} {:>8} {:>9}",
        "dim/raw", "dim/redis", "loc/raw", "loc/redis"
    );
    let _ = writeln!(out, "{head}");
    let mut sizes: Vec<u64> = rows.iter().map(|r| r.size_bytes).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for op in [Op::Put, Op::Get] {
        for &size in &sizes {
            let of = |k: ContenderKind| {
                rows.iter()
                    .find(|r| r.contender == k && r.op == op && r.size_bytes == size)
            };
            let mut line = format!("{:<9} {:<4}", human_size(size), op.name());
            for &k in &kinds {
                let _ = write!(line, " {:>21}", cell(of(k).copied()));
            }
            let med = |k| of(k).map(|r| r.median_us);
            let (raw, redis) = (med(ContenderKind::RawTcp), med(ContenderKind::Redis));
            let _ = write!(
                line,
                " {:>8} {:>9} {:>8} {:>9}",
                ratio(med(ContenderKind::Dimstore), raw),
                ratio(med(ContenderKind::Dimstore), redis),
                ratio(med(ContenderKind::DimstoreLocal), raw),
                ratio(med(ContenderKind::DimstoreLocal), redis)
            );
            let _ = writeln!(out, "{line}");
        }
    }
    let streams = rows.iter().filter(|r| r.op == Op::Stream);
    for stream in streams {
        let size = stream.size_bytes;
        let get = |k: ContenderKind| {
            rows.iter()
                .find(|r| r.contender == k && r.op == Op::Get && r.size_bytes == size)
                .map(|r| r.mb_per_s)
        };
        let _ = writeln!(
            out,
            "\nBandwidth, {}: raw TCP one-way stream {:.0} MB/s; get (MB/s, share of the stream):",
            human_size(size),
            stream.mb_per_s,
        );
        for k in [
            ContenderKind::Dimstore,
            ContenderKind::DimstoreLocal,
            ContenderKind::RawTcp,
            ContenderKind::Redis,
        ] {
            if let Some(v) = get(k) {
                let share = ratio(Some(v), Some(stream.mb_per_s));
                let _ = writeln!(out, "  {:<15} {v:>8.0} MB/s  {share:>6}", k.name());
            }
        }
    }
}

fn render_throughput(out: &mut String, rows: &[&Row]) {
    let kinds = kinds_in(rows);
    let size = rows.first().map_or(0, |r| r.size_bytes);
    let _ = writeln!(
        out,
        "\nThroughput, {} objects: objects/s per client (median us per round trip); \
         ratio dimstore / redis per client",
        human_size(size)
    );
    let mut head = format!("{:<7} {:<9}", "clients", "op");
    for k in &kinds {
        let _ = write!(head, " {:>20}", k.name());
    }
    let _ = write!(head, " {:>9} {:>9}", "dim/redis", "loc/redis");
    let _ = writeln!(out, "{head}");
    let mut counts: Vec<usize> = rows.iter().map(|r| r.clients).collect();
    counts.sort_unstable();
    counts.dedup();
    for clients in counts {
        for op in [Op::Get, Op::GetBatch] {
            let of = |k: ContenderKind| {
                rows.iter()
                    .find(|r| r.contender == k && r.op == op && r.clients == clients)
            };
            if kinds.iter().all(|&k| of(k).is_none()) {
                continue;
            }
            let mut line = format!("{clients:<7} {:<9}", op.name());
            for &k in &kinds {
                let text = of(k).map_or("-".into(), |r| {
                    format!("{:.0} ({:.1})", r.ops_per_s / clients as f64, r.median_us)
                });
                let _ = write!(line, " {text:>20}");
            }
            let per = |k| of(k).map(|r| r.ops_per_s);
            let redis = per(ContenderKind::Redis);
            let _ = write!(
                line,
                " {:>9} {:>9}",
                ratio(per(ContenderKind::Dimstore), redis),
                ratio(per(ContenderKind::DimstoreLocal), redis)
            );
            let _ = writeln!(out, "{line}");
        }
    }
}

fn render_verdicts(out: &mut String, verdicts: &[Verdict]) {
    if verdicts.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nTargets (reported, not asserted)");
    let _ = writeln!(
        out,
        "{:<10} {:<15} {:<50} {:>8} {:>7} {:>4}",
        "placement", "contender", "comparison (contender / reference)", "ratio", "target", "met"
    );
    for v in verdicts {
        let _ = writeln!(
            out,
            "{:<10} {:<15} {:<50} {:>7.2}x {:>7} {:>4}",
            v.placement.name(),
            v.contender.name(),
            v.what,
            v.ratio,
            v.target,
            if v.met { "yes" } else { "NO" }
        );
    }
    let met = verdicts.iter().filter(|v| v.met).count();
    let _ = writeln!(out, "{met} of {} target checks met", verdicts.len());
}
