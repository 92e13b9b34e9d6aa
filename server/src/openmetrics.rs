//! The server's metrics in the OpenMetrics text format, encoded by `prometheus-client`.
//!
//! Everything is read at scrape time from the same sources as stats: the request histograms
//! ([`crate::metrics::RequestMetrics`]) and [`StoreService::stats`], so `/metrics` and
//! `dimstore stat --json` agree. Histogram buckets are cumulative counts read from the HDR
//! histograms at fixed bounds.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::metrics::OpRecord;
use crate::StoreService;

/// Upper bounds of the service-time buckets, seconds (1 us to 10 s, 1-2.5-5 steps).
const DURATION_BUCKETS: [f64; 22] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
    5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the request-size buckets, bytes (64 B to 16 GiB, powers of 4).
const SIZE_BUCKETS: [f64; 15] = [
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
    4294967296.0,
    17179869184.0,
];

/// A registry whose only collector reads `service` at every scrape.
pub fn registry(service: StoreService) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ServiceCollector(service)));
    registry
}

/// Encodes `registry` as an OpenMetrics text exposition (ending in `# EOF`).
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail; a collector error would leave a partial text.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    text
}

/// Reads the service's histograms and stats at scrape time.
#[derive(Debug)]
struct ServiceCollector(StoreService);

impl Collector for ServiceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_requests(&mut encoder)?;
        self.encode_stats(&mut encoder)?;
        self.encode_pressure(&mut encoder)
    }
}

/// Label set of a request metric.
type OpLabels<'a> = [(&'static str, &'a str); 2];

impl ServiceCollector {
    /// Per (op, transport): request and error counters, service-time and size histograms.
    fn encode_requests(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut records: Vec<(OpLabelsOwned, Snapshot)> = Vec::new();
        self.0.request_metrics().for_each(|op, transport, record| {
            records.push((
                OpLabelsOwned(op.name(), transport.to_string()),
                Snapshot::of(record),
            ));
        });
        let mut requests = encoder.encode_descriptor(
            "dimstore_requests",
            "Requests handled, per operation and transport (a batch counts once).",
            None,
            MetricType::Counter,
        )?;
        for (labels, s) in &records {
            ConstCounter::new(s.count).encode(requests.encode_family(&labels.as_set())?)?;
        }
        let mut errors = encoder.encode_descriptor(
            "dimstore_request_errors",
            "Requests answered with an error, per operation and transport.",
            None,
            MetricType::Counter,
        )?;
        for (labels, s) in &records {
            ConstCounter::new(s.errors).encode(errors.encode_family(&labels.as_set())?)?;
        }
        let mut durations = encoder.encode_descriptor(
            "dimstore_request_duration",
            "Server-side service time of a request: from its body decoded (before a put's \
             payload is received) to its reply ready.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (labels, s) in &records {
            durations
                .encode_family(&labels.as_set())?
                .encode_histogram::<NoLabelSet>(
                    s.sum_ns as f64 / 1e9,
                    s.count,
                    &s.duration_buckets,
                    None,
                )?;
        }
        let mut sizes = encoder.encode_descriptor(
            "dimstore_request_object",
            "Object bytes a request carried (put/set: received; get: found objects).",
            Some(&Unit::Bytes),
            MetricType::Histogram,
        )?;
        for (labels, s) in &records {
            sizes
                .encode_family(&labels.as_set())?
                .encode_histogram::<NoLabelSet>(s.bytes as f64, s.count, &s.size_buckets, None)?;
        }
        Ok(())
    }

    /// The store's gauges and counters, as in stats.
    fn encode_stats(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = self.0.stats();
        let mut info = encoder.encode_descriptor(
            "dimstore_server",
            "This server: node, control address, version, and the placement line (binding).",
            None,
            MetricType::Info,
        )?;
        info.encode_info(&[
            ("node", st.node.as_str()),
            ("address", st.advertised.as_str()),
            ("version", env!("CARGO_PKG_VERSION")),
            ("binding", st.binding.as_str()),
        ])?;
        let gauges: [(&str, &str, Option<Unit>, u64); 7] = [
            ("dimstore_objects", "Objects stored.", None, st.objects),
            (
                "dimstore_reserved_keys",
                "Deferred keys reserved but not set.",
                None,
                st.reserved,
            ),
            (
                "dimstore_memory_used",
                "Object memory in use.",
                Some(Unit::Bytes),
                st.bytes_used,
            ),
            (
                "dimstore_memory_limit",
                "Configured object memory limit.",
                Some(Unit::Bytes),
                st.memory_limit,
            ),
            (
                "dimstore_arena_mapped",
                "Arena memory mapped.",
                Some(Unit::Bytes),
                st.arena_mapped,
            ),
            (
                "dimstore_leases",
                "Objects clients hold now (mapped and one-sided reads).",
                None,
                st.leases,
            ),
            (
                "dimstore_uptime",
                "Time since the server started.",
                Some(Unit::Seconds),
                st.uptime_ms / 1000,
            ),
        ];
        encode_gauges(encoder, &gauges)?;
        let counters: [(&str, &str, u64); 5] = [
            (
                "dimstore_objects_put",
                "Objects stored since start.",
                st.puts,
            ),
            (
                "dimstore_objects_requested",
                "Objects requested by gets since start.",
                st.gets,
            ),
            (
                "dimstore_get_hits",
                "Objects requested and found since start.",
                st.get_hits,
            ),
            (
                "dimstore_evictions",
                "Objects evicted since start.",
                st.evictions,
            ),
            (
                "dimstore_store_full",
                "Requests refused for lack of memory since start.",
                st.store_full,
            ),
        ];
        encode_counters(encoder, None, &counters)?;
        let mut connections = encoder.encode_descriptor(
            "dimstore_connections",
            "Connections open now, per transport.",
            None,
            MetricType::Gauge,
        )?;
        for t in &st.transports {
            let gauge = ConstGauge::new(i64::try_from(t.connections).unwrap_or(i64::MAX));
            gauge.encode(connections.encode_family(&[("transport", t.name.as_str())])?)?;
        }
        let mut refused = encoder.encode_descriptor(
            "dimstore_refused_connections",
            "Connections closed as soon as they were accepted, per transport: the server held \
             as many unauthenticated connections (--max-pending-connections), or connections \
             in all (the descriptor limit less a reserve), as it allows.",
            None,
            MetricType::Counter,
        )?;
        for t in &st.transports {
            ConstCounter::new(t.refused_connections)
                .encode(refused.encode_family(&[("transport", t.name.as_str())])?)?;
        }
        let mut sent = encoder.encode_descriptor(
            "dimstore_sent",
            "Object bytes sent to clients, per transport (one-sided reads included).",
            Some(&Unit::Bytes),
            MetricType::Counter,
        )?;
        for t in &st.transports {
            ConstCounter::new(t.bytes_served)
                .encode(sent.encode_family(&[("transport", t.name.as_str())])?)?;
        }
        Ok(())
    }
}

impl ServiceCollector {
    /// Memory pressure: spilled and kept bytes, spill traffic and its busy time, restores,
    /// and the objects the server removed, by cause.
    fn encode_pressure(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = self.0.stats();
        let p = &st.pressure;
        let gauges: [(&str, &str, Option<Unit>, u64); 3] = [
            (
                "dimstore_spilled",
                "Object bytes spilled to disk now (not in memory).",
                Some(Unit::Bytes),
                p.spilled_bytes,
            ),
            (
                "dimstore_spilled_objects",
                "Objects spilled to disk now.",
                None,
                p.spilled_objects,
            ),
            (
                "dimstore_spill_kept",
                "Spill files kept for objects restored unchanged (spilling them again writes nothing).",
                Some(Unit::Bytes),
                p.spill_kept_bytes,
            ),
        ];
        encode_gauges(encoder, &gauges)?;
        let bytes: [(&str, &str, u64); 2] = [
            (
                "dimstore_spill_written",
                "Bytes written to spill files since start.",
                p.spill_written,
            ),
            (
                "dimstore_spill_read",
                "Bytes read back from spill files since start.",
                p.spill_read,
            ),
        ];
        encode_counters(encoder, Some(&Unit::Bytes), &bytes)?;
        let seconds: [(&str, &str, f64); 2] = [
            (
                "dimstore_spill_write",
                "Time a spill write was in flight since start (bandwidth: written bytes / this).",
                p.spill_write_ns as f64 / 1e9,
            ),
            (
                "dimstore_spill_read",
                "Time a restore read was in flight since start.",
                p.spill_read_ns as f64 / 1e9,
            ),
        ];
        encode_counters(encoder, Some(&Unit::Seconds), &seconds)?;
        let counters: [(&str, &str, u64); 3] = [
            (
                "dimstore_restores",
                "Objects read back from spill files since start.",
                p.restores,
            ),
            (
                "dimstore_respills",
                "Objects spilled again to their kept file, without a write, since start.",
                p.respills,
            ),
            (
                "dimstore_spill_failures",
                "Spills that failed (disk full, spill limit, I/O error) since start; the objects stayed in memory.",
                p.spill_failures,
            ),
        ];
        encode_counters(encoder, None, &counters)?;
        let mut removed = encoder.encode_descriptor(
            "dimstore_server_evictions",
            "Objects the server removed since start, by cause: the eviction policy, an expired time to live or lease, their owner gone, or consumed by a get-and-evict.",
            None,
            MetricType::Counter,
        )?;
        for (cause, value) in [
            ("policy", p.policy_evictions),
            ("expired", p.expired),
            ("owner", p.owner_evictions),
            ("consumed", p.consumed),
        ] {
            ConstCounter::new(value).encode(removed.encode_family(&[("cause", cause)])?)?;
        }
        Ok(())
    }
}

/// One gauge per row: name, help, unit and value (beyond `i64` shown as `i64::MAX`).
fn encode_gauges(
    encoder: &mut DescriptorEncoder,
    rows: &[(&str, &str, Option<Unit>, u64)],
) -> Result<(), std::fmt::Error> {
    for (name, help, unit, value) in rows {
        let gauge = ConstGauge::new(i64::try_from(*value).unwrap_or(i64::MAX));
        let metric = encoder.encode_descriptor(name, help, unit.as_ref(), gauge.metric_type())?;
        gauge.encode(metric)?;
    }
    Ok(())
}

/// One counter per row (name, help, value), all in `unit`.
fn encode_counters<N>(
    encoder: &mut DescriptorEncoder,
    unit: Option<&Unit>,
    rows: &[(&str, &str, N)],
) -> Result<(), std::fmt::Error>
where
    N: Copy,
    ConstCounter<N>: EncodeMetric,
{
    for (name, help, value) in rows {
        let counter = ConstCounter::new(*value);
        let metric = encoder.encode_descriptor(name, help, unit, counter.metric_type())?;
        counter.encode(metric)?;
    }
    Ok(())
}

/// Owned labels of a request metric.
struct OpLabelsOwned(&'static str, String);

impl OpLabelsOwned {
    fn as_set(&self) -> OpLabels<'_> {
        [("op", self.0), ("transport", self.1.as_str())]
    }
}

/// What a scrape reads of one [`OpRecord`], taken under its lock.
struct Snapshot {
    count: u64,
    errors: u64,
    sum_ns: u64,
    bytes: u64,
    /// (upper bound, requests in this bucket), ending with +Inf.
    duration_buckets: Vec<(f64, u64)>,
    size_buckets: Vec<(f64, u64)>,
}

impl Snapshot {
    fn of(record: &OpRecord) -> Snapshot {
        Snapshot {
            count: record.count(),
            errors: record.errors,
            sum_ns: record.sum_ns,
            bytes: record.bytes,
            duration_buckets: buckets(&record.durations, &DURATION_BUCKETS, 1e9),
            size_buckets: buckets(&record.sizes, &SIZE_BUCKETS, 1.0),
        }
    }
}

/// Per-bucket counts of `histogram` at `bounds` (in units of `scale` histogram values),
/// then the rest under +Inf.
fn buckets(
    histogram: &hdrhistogram::Histogram<u64>,
    bounds: &[f64],
    scale: f64,
) -> Vec<(f64, u64)> {
    let total = histogram.len();
    let mut out = Vec::with_capacity(bounds.len() + 1);
    let mut below = 0;
    for &bound in bounds {
        let cumulative = histogram
            .count_between(0, (bound * scale) as u64)
            .clamp(below, total);
        out.push((bound, cumulative - below));
        below = cumulative;
    }
    out.push((f64::INFINITY, total - below));
    out
}
