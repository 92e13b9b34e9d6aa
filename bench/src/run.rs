//! One benchmark run: for each placement, start every contender's server, measure latency
//! and throughput, stop the servers; then print the report and write the CSV.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::contenders::{self, pattern, Contender, ContenderKind, ServerSetup};
use crate::latency;
use crate::options::{human_size, Settings};
use crate::placement::{Cpus, Masks, Pinned, Placement};
use crate::report::{self, Row};
use crate::throughput;

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Every measurement.
    pub rows: Vec<Row>,
    /// The report printed on stdout.
    pub report: String,
}

/// Runs the benchmark described by `settings`, prints the report on stdout (progress on
/// stderr) and writes the CSV if asked to.
pub fn run(settings: &Settings) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let cpus = Cpus::current()?;
    let setup = ServerSetup {
        dimstore_bin: settings.server_bin.clone(),
        dimstore_threads: settings.server_threads,
        redis_bin: settings.redis_bin.clone(),
        max_object: settings.sizes.last().copied().unwrap_or(1 << 20),
    };
    let mut notes = Vec::new();
    let kinds: Vec<ContenderKind> = settings
        .contenders
        .iter()
        .copied()
        .filter(|&k| match contenders::unavailable(k, &setup) {
            Some(why) => {
                eprintln!("note: {why}");
                notes.push(why);
                false
            }
            None => true,
        })
        .collect();
    let placements: Vec<(Placement, Masks)> = settings
        .placements
        .iter()
        .filter_map(|&p| match p.masks(&cpus) {
            Ok(masks) => Some((p, masks)),
            Err(e) => {
                let why = format!("placement {} skipped: {e}", p.name());
                eprintln!("note: {why}");
                notes.push(why);
                None
            }
        })
        .collect();

    let per_placement = if settings.latency() {
        latency::planned(settings, &kinds)
    } else {
        0
    } + if settings.throughput() {
        throughput::planned(settings, &kinds)
    } else {
        0
    };
    let progress = ProgressBar::new(per_placement * placements.len() as u64).with_style(
        ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} {wide_msg}")
            .context("progress template")?
            .progress_chars("=> "),
    );
    let value = if settings.latency() {
        pattern(setup.max_object as usize)
    } else {
        Vec::new()
    };

    let mut rows = Vec::new();
    let mut headers = Vec::new();
    for (placement, masks) in placements {
        headers.push((placement, placement.describe(&cpus)));
        let servers: Vec<Box<dyn Contender>> = {
            let _pin = Pinned::to(masks.server.as_deref())?;
            kinds
                .iter()
                .map(|&k| {
                    contenders::start(k, &setup)
                        .with_context(|| format!("cannot start the {} server", k.name()))
                })
                .collect::<anyhow::Result<_>>()?
        };
        // Clients (this thread and the worker processes it starts) run on the client CPUs.
        let _pin = Pinned::to(masks.client.as_deref())?;
        if settings.latency() {
            let mut clients: latency::Clients = servers
                .iter()
                .map(|s| Ok((s.kind(), s.connect()?)))
                .collect::<anyhow::Result<_>>()?;
            rows.extend(latency::run(
                settings,
                placement,
                &mut clients,
                &value,
                &progress,
            )?);
        }
        if settings.throughput() {
            rows.extend(throughput::run(settings, placement, &servers, &progress)?);
        }
    }
    progress.finish_and_clear();

    let mut text = preamble(settings, &cpus, &kinds, &notes);
    text.push_str(&report::render(&rows, &headers));
    let _ = writeln!(text, "\n(measured in {:.0?})", started.elapsed());
    print!("{text}");
    if let Some(path) = &settings.csv {
        report::write_csv(path, &rows)?;
        eprintln!("CSV written to {}", path.display());
    }
    Ok(Outcome { rows, report: text })
}

/// What was run, where.
fn preamble(settings: &Settings, cpus: &Cpus, kinds: &[ContenderKind], notes: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "dimstore-bench{}",
        if settings.quick { " (quick)" } else { "" }
    );
    let _ = writeln!(out, "machine: {}", machine(cpus));
    let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    let _ = writeln!(out, "contenders: {}", names.join(", "));
    if settings.latency() {
        let sizes: Vec<String> = settings.sizes.iter().map(|&s| human_size(s)).collect();
        let _ = writeln!(
            out,
            "latency: sizes {}; at most {} iterations (+ warm-up) or {:?} per measurement",
            sizes.join(", "),
            settings.iterations(settings.sizes[0]),
            settings.latency_time
        );
    }
    if settings.throughput() {
        let _ = writeln!(
            out,
            "throughput: {} objects, {:?} per measurement, client processes {:?}, batch {}",
            human_size(settings.throughput_size),
            settings.duration,
            settings.client_counts,
            settings.batch
        );
    }
    let _ = writeln!(
        out,
        "dimstore-server: {} ({} threads)",
        settings.server_bin.display(),
        settings.server_threads
    );
    for note in notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

/// CPU model, CPU count and kernel.
fn machine(cpus: &Cpus) -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let uname = rustix::system::uname();
    format!(
        "{} CPU(s) usable ({model}), Linux {}",
        cpus.allowed.len(),
        uname.release().to_string_lossy()
    )
}
