//! Server-side request histograms and the OpenMetrics endpoint (`--metrics-listen`), on real
//! server processes: counts equal the operations performed, `/metrics` parses with a real
//! OpenMetrics parser (Python's prometheus_client) and agrees with `dimstore stat --json`,
//! and the endpoint survives garbage and 100 concurrent scrapes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use dimstore::{ClientOp, OpStats};
use dimstore_tests::{binary, pattern, ServerOptions, TestServer};

/// A server with the metrics endpoint on a free loopback port.
fn server_with_metrics() -> TestServer {
    std::env::set_var("DIMSTORE_ONE_SIDED", "none");
    TestServer::start(ServerOptions {
        extra: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
        ..ServerOptions::default()
    })
}

/// The metrics address from the ready file.
fn metrics_address(server: &TestServer) -> String {
    server
        .ready
        .metrics
        .clone()
        .expect("the ready file names the metrics address")
}

/// Sends `request` as is and returns the whole answer (the server closes after one).
fn http(address: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).expect("connect to metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    stream.write_all(request).expect("send request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read answer");
    String::from_utf8(answer).expect("utf-8 answer")
}

/// Status code and body of a `GET /metrics`.
fn scrape(address: &str) -> (u16, String) {
    let answer = http(address, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    split(&answer)
}

fn split(answer: &str) -> (u16, String) {
    let code = answer
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

/// The venv's Python with prometheus_client (scripts/install-deps.sh makes it), or `None`
/// (a failure under CI=true).
fn python_with_parser() -> Option<PathBuf> {
    let venv = std::env::var_os("DIMSTORE_PY_VENV").unwrap_or_else(|| "/opt/dimstore-venv".into());
    let python = PathBuf::from(venv).join("bin/python3");
    let works = Command::new(&python)
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return Some(python);
    }
    let why = format!(
        "{} has no prometheus_client: run scripts/install-deps.sh",
        python.display()
    );
    dimstore_tests::skip_or_fail("the OpenMetrics parser check", &why);
    None
}

/// One parsed sample.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: serde_json::Map<String, serde_json::Value>,
    value: f64,
}

/// Parses `text` with prometheus_client's OpenMetrics parser (fails the test if it refuses).
fn parse_openmetrics(python: &PathBuf, text: &str) -> Vec<Sample> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/openmetrics_to_json.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the parser");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed the parser");
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    samples
        .into_iter()
        .map(|s| Sample {
            name: s["name"].as_str().expect("name").to_string(),
            labels: s["labels"].as_object().expect("labels").clone(),
            value: s["value"].as_f64().expect("value"),
        })
        .collect()
}

/// The value of sample `name` with exactly these labels.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).and_then(|x| x.as_str()) == Some(*v))
        })
        .map(|s| s.value)
}

fn op<'a>(ops: &'a [OpStats], name: &str, transport: &str) -> &'a OpStats {
    ops.iter()
        .find(|o| o.op == name && o.transport == transport)
        .unwrap_or_else(|| panic!("no {name} over {transport} in {ops:#?}"))
}

#[test]
fn histogram_counts_equal_the_operations_performed() {
    let server = server_with_metrics();
    let tcp = server.client("tcp");
    let objects: Vec<Vec<u8>> = (0..40).map(|i| pattern(1000 + i * 10, i as u64)).collect();
    let mut keys = Vec::new();
    for object in &objects {
        keys.push(tcp.put(object).expect("put"));
    }
    let batch: Vec<&[u8]> = objects[..3].iter().map(Vec::as_slice).collect();
    keys.extend(tcp.put_batch(&batch).expect("batch put"));
    for key in &keys[..25] {
        tcp.get(key).expect("get");
    }
    for key in &keys[..10] {
        assert!(tcp.exists(key).expect("exists"));
    }
    for key in &keys[..5] {
        assert!(tcp.evict(key).expect("evict"));
    }
    let deferred = tcp.new_keys(2).expect("new keys");
    for key in &deferred {
        tcp.set(key, b"later").expect("set");
    }
    // Refused before its payload is read: still one set, an error, no bytes.
    assert!(tcp.set(&deferred[0], b"again").is_err(), "already set");
    // A refused get (evicted) is still one get, found nothing, no error.
    tcp.get_batch(&keys[..2]).expect("get of evicted keys");
    // The same-node transport is counted on its own.
    let local = server.client("local");
    let local_key = local.put(&pattern(5000, 99)).expect("local put");
    local.get(&local_key).expect("local get");

    let stats = tcp.stats().expect("stats");
    let put_bytes: u64 = objects.iter().map(|o| o.len() as u64).sum::<u64>()
        + objects[..3].iter().map(|o| o.len() as u64).sum::<u64>();
    let put = op(&stats.ops, "put", "tcp");
    assert_eq!((put.count, put.errors, put.bytes), (41, 0, put_bytes));
    let get = op(&stats.ops, "get", "tcp");
    let got_bytes: u64 = objects[..25].iter().map(|o| o.len() as u64).sum();
    assert_eq!((get.count, get.bytes), (26, got_bytes));
    assert_eq!(op(&stats.ops, "exists", "tcp").count, 10);
    assert_eq!(op(&stats.ops, "evict", "tcp").count, 5);
    assert_eq!(op(&stats.ops, "new_keys", "tcp").count, 1);
    let set = op(&stats.ops, "set", "tcp");
    assert_eq!((set.count, set.errors, set.bytes), (3, 1, 10));
    // Same-node puts may be in place (create + seal) or copied: either way one store.
    let local_stores: u64 = stats
        .ops
        .iter()
        .filter(|o| o.transport == "local" && (o.op == "put" || o.op == "seal"))
        .map(|o| o.count)
        .sum();
    assert_eq!(local_stores, 1, "{:#?}", stats.ops);
    assert_eq!(op(&stats.ops, "get", "local").count, 1);
    for o in &stats.ops {
        assert!(
            o.p50_ns <= o.p90_ns && o.p90_ns <= o.p99_ns && o.p99_ns <= o.p999_ns,
            "{o:?}"
        );
        // The histogram's max is its bucket's highest value: within 1 % of the exact sum.
        assert!(o.max_ns > 0 && o.p999_ns <= o.max_ns, "{o:?}");
        assert!(o.sum_ns + o.sum_ns / 100 >= o.max_ns, "{o:?}");
    }
    // Histograms hold what they were given: the largest put request (the batch of three)
    // within 1 %.
    let largest = batch.iter().map(|o| o.len() as u64).sum::<u64>();
    assert!(put.bytes_max.abs_diff(largest) <= largest / 100, "{put:?}");
}

#[test]
fn stat_prints_percentiles_per_op() {
    let server = server_with_metrics();
    let store = server.client("tcp");
    let key = store.put(b"observed").expect("put");
    store.get(&key).expect("get");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(binary("dimstore"))
        .args(["stat"])
        .env("DIMSTORE_SERVER", server.address())
        .env("DIMSTORE_RUNTIME_DIR", dir.path())
        .env("DIMSTORE_SPAWN", "never")
        .env("DIMSTORE_LOCAL", "off")
        .env_remove("DIMSTORE_FLEET")
        .env_remove("DIMSTORE_TOKEN")
        .output()
        .expect("dimstore stat");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let header = text
        .lines()
        .find(|l| l.contains("p99"))
        .unwrap_or_else(|| panic!("no p99 column:\n{text}"));
    for column in ["p50", "p999", "max", "count"] {
        assert!(header.contains(column), "{header}");
    }
    let put_row = text
        .lines()
        .find(|l| l.trim_start().starts_with("put ") && l.contains("tcp"))
        .unwrap_or_else(|| panic!("no put row:\n{text}"));
    assert_eq!(put_row.split_whitespace().nth(2), Some("1"), "{put_row}");
}

#[test]
fn metrics_parse_as_openmetrics_and_agree_with_stat_json() {
    let Some(python) = python_with_parser() else {
        return;
    };
    let server = server_with_metrics();
    let store = server.client("tcp");
    let keys: Vec<_> = (0..30)
        .map(|i| store.put(&pattern(100 << (i % 12), i)).expect("put"))
        .collect();
    for key in &keys[..20] {
        store.get(key).expect("get");
    }
    for key in &keys[..7] {
        store.exists(key).expect("exists");
    }
    store.evict(&keys[0]).expect("evict");

    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(binary("dimstore"))
        .args(["stat", "--json"])
        .env("DIMSTORE_SERVER", server.address())
        .env("DIMSTORE_RUNTIME_DIR", dir.path())
        .env("DIMSTORE_SPAWN", "never")
        .env("DIMSTORE_LOCAL", "off")
        .env_remove("DIMSTORE_FLEET")
        .env_remove("DIMSTORE_TOKEN")
        .output()
        .expect("dimstore stat --json");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stat: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stat json");

    let (code, text) = scrape(&metrics_address(&server));
    assert_eq!(code, 200, "{text}");
    let samples = parse_openmetrics(&python, &text);

    let ops = stat["ops"].as_array().expect("ops in stat --json");
    let mut compared = 0;
    for o in ops {
        let (name, transport) = (
            o["op"].as_str().expect("op"),
            o["transport"].as_str().expect("transport"),
        );
        if matches!(name, "hello" | "stats") {
            continue; // the stat command and the scrape themselves move these
        }
        let labels = [("op", name), ("transport", transport)];
        let count = o["count"].as_f64().expect("count");
        assert_eq!(
            value(&samples, "dimstore_requests_total", &labels),
            Some(count),
            "{name}"
        );
        assert_eq!(
            value(&samples, "dimstore_request_duration_seconds_count", &labels),
            Some(count),
            "{name}"
        );
        let inf = [("op", name), ("transport", transport), ("le", "+Inf")];
        assert_eq!(
            value(&samples, "dimstore_request_duration_seconds_bucket", &inf),
            Some(count),
            "{name}"
        );
        let sum = value(&samples, "dimstore_request_duration_seconds_sum", &labels).expect("sum");
        let sum_ns = o["sum_ns"].as_f64().expect("sum_ns");
        assert!(
            (sum * 1e9 - sum_ns).abs() <= 1.0 + sum_ns * 1e-9,
            "{sum} s vs {sum_ns} ns"
        );
        assert_eq!(
            value(&samples, "dimstore_request_object_bytes_sum", &labels),
            o["bytes"].as_f64(),
            "{name}"
        );
        // Bucket counts are cumulative and the p99 is inside the bucket that reaches 99 %.
        let p99 = o["p99_ns"].as_f64().expect("p99") / 1e9;
        let reaching = samples
            .iter()
            .filter(|s| {
                s.name == "dimstore_request_duration_seconds_bucket"
                    && s.labels.get("op").and_then(|v| v.as_str()) == Some(name)
                    && s.labels.get("transport").and_then(|v| v.as_str()) == Some(transport)
                    && s.value >= (count * 0.99).ceil()
            })
            .filter_map(|s| s.labels.get("le")?.as_str()?.parse::<f64>().ok())
            .fold(f64::INFINITY, f64::min);
        assert!(
            p99 <= reaching * 1.01,
            "{name}: p99 {p99} s above the bucket le={reaching}"
        );
        compared += 1;
    }
    assert!(compared >= 4, "compared only {compared} ops: {ops:?}");
    assert_eq!(
        value(
            &samples,
            "dimstore_requests_total",
            &[("op", "put"), ("transport", "tcp")]
        ),
        Some(30.0)
    );
    for (metric, field) in [
        ("dimstore_objects", "objects"),
        ("dimstore_memory_limit_bytes", "memory_limit"),
        ("dimstore_evictions_total", "evictions"),
        ("dimstore_objects_put_total", "puts"),
        ("dimstore_get_hits_total", "get_hits"),
    ] {
        assert_eq!(
            value(&samples, metric, &[]),
            stat[field].as_f64(),
            "{metric}"
        );
    }
    let info = samples
        .iter()
        .find(|s| s.name == "dimstore_server_info")
        .expect("dimstore_server_info");
    assert_eq!(info.labels["node"], stat["node"]);
    assert_eq!(info.labels["binding"], stat["binding"]);
    assert_eq!(info.value, 1.0);
}

#[test]
fn endpoint_survives_garbage_and_100_concurrent_scrapes() {
    let server = server_with_metrics();
    let address = metrics_address(&server);
    let store = server.client("tcp");
    let key = store.put(b"still here").expect("put");

    let refused = |request: &[u8]| split(&http(&address, request)).0;
    assert_eq!(refused(b"GET / HTTP/1.1\r\n\r\n"), 404);
    assert_eq!(refused(b"GET /metricsX HTTP/1.1\r\n\r\n"), 404);
    assert_eq!(
        refused(b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
        405
    );
    assert_eq!(
        refused(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
        400
    );
    assert_eq!(refused(b"GET /metrics HTTP/9\r\n\r\n"), 400);
    assert_eq!(refused(b"GET /metrics\r\n\r\n"), 400);
    // A head that never ends: cut at the limit, not read forever.
    let mut endless = b"GET /metrics HTTP/1.1\r\nX-Junk: ".to_vec();
    endless.extend(std::iter::repeat_n(b'a', 64 << 10));
    let mut stream = TcpStream::connect(&address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    // The server may close while we still write: only its answer matters.
    let _ = stream.write_all(&endless);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert_eq!(split(&String::from_utf8_lossy(&answer)).0, 431);
    // Peers that connect and say nothing, or half a head, then hang up.
    for partial in [&b""[..], b"GET /met"] {
        let mut s = TcpStream::connect(&address).expect("connect");
        s.write_all(partial).expect("write");
    }
    // A peer that holds its connection open while 100 scrapers run.
    let _idle = TcpStream::connect(&address).expect("connect idle");

    let answers: Vec<(u16, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..100).map(|_| scope.spawn(|| scrape(&address))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("scraper"))
            .collect()
    });
    for (code, body) in &answers {
        assert_eq!(*code, 200, "{body}");
        assert!(body.ends_with("# EOF\n"), "incomplete exposition: {body}");
        assert!(
            body.contains("dimstore_requests_total{op=\"put\",transport=\"tcp\"} 1"),
            "{body}"
        );
    }
    // The store kept serving throughout.
    assert_eq!(
        &*store.get(&key).expect("get after the storm"),
        b"still here"
    );
}

#[test]
fn client_metrics_count_the_stores_own_calls() {
    let server = server_with_metrics();
    let plain = server.client("tcp");
    assert!(
        plain.metrics().is_none(),
        "metrics are off unless asked for"
    );
    let store = server.client_with("tcp", |c| c.metrics = true);
    let objects: Vec<Vec<u8>> = (0..12).map(|i| pattern(700 + i, i as u64)).collect();
    let keys: Vec<_> = objects.iter().map(|o| store.put(o).expect("put")).collect();
    for key in &keys[..8] {
        store.get(key).expect("get");
    }
    store.evict(&keys[0]).expect("evict");
    assert!(store.get(&keys[0]).is_err(), "evicted");
    store.exists_batch(&keys).expect("exists");
    let deferred = store.new_key().expect("new key");
    // A clone shares the store's metrics.
    store.clone().set(&deferred, b"12345").expect("set");

    let metrics = store.metrics().expect("metrics on");
    let of = |op: ClientOp| {
        metrics
            .iter()
            .find(|c| c.op == op)
            .unwrap_or_else(|| panic!("no {op:?} in {metrics:?}"))
    };
    let get = of(ClientOp::Get);
    let got: u64 = objects[..8].iter().map(|o| o.len() as u64).sum();
    assert_eq!((get.count, get.errors, get.bytes), (9, 1, got));
    assert_eq!(get.latency.len(), 9);
    assert!(get.quantile(0.5) <= get.quantile(0.99) && get.quantile(0.99) <= get.max());
    assert!(get.max() > Duration::ZERO && get.total >= get.max() - get.max() / 100);
    let put = of(ClientOp::Put);
    let put_bytes: u64 = objects.iter().map(|o| o.len() as u64).sum();
    assert_eq!((put.count, put.errors, put.bytes), (12, 0, put_bytes));
    assert_eq!(
        (of(ClientOp::Evict).count, of(ClientOp::Exists).count),
        (1, 1)
    );
    assert_eq!(
        (of(ClientOp::NewKeys).count, of(ClientOp::Set).bytes),
        (1, 5)
    );
    // The server counted the same calls.
    let stats = plain.stats().expect("stats");
    assert_eq!(op(&stats.ops, "get", "tcp").count, get.count);
    assert_eq!(op(&stats.ops, "put", "tcp").count, put.count);
}

#[test]
fn spill_metrics_agree_with_stat_json() {
    let Some(python) = python_with_parser() else {
        return;
    };
    std::env::set_var("DIMSTORE_ONE_SIDED", "none");
    let root = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(ServerOptions {
        memory_limit: "8MiB".into(),
        extra: vec![
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
            "--segment-size".into(),
            "8MiB".into(),
            "--spill-dir".into(),
            root.path().to_str().expect("utf-8").into(),
        ],
        ..ServerOptions::default()
    });
    let store = server.client("tcp");
    let mib = 1 << 20;
    // Three times the memory, then everything read back (restores, and re-spills of
    // restored objects to their kept files), then one consume-once get.
    let keys: Vec<_> = (0..24)
        .map(|i| store.put(&pattern(mib, i)).expect("put spills"))
        .collect();
    for (i, key) in keys.iter().enumerate() {
        assert!(store.get(key).expect("get")[..] == pattern(mib, i as u64)[..]);
    }
    store.get_and_evict(&keys[23]).expect("consume");
    let stats = store.stats().expect("stats");
    let p = &stats.pressure;
    assert!(p.restores > 0 && p.spill_written > 0, "{p:?}");

    let (code, text) = scrape(&metrics_address(&server));
    assert_eq!(code, 200, "{text}");
    let samples = parse_openmetrics(&python, &text);
    for (metric, expected) in [
        ("dimstore_spilled_bytes", p.spilled_bytes),
        ("dimstore_spilled_objects", p.spilled_objects),
        ("dimstore_spill_kept_bytes", p.spill_kept_bytes),
        ("dimstore_spill_written_bytes_total", p.spill_written),
        ("dimstore_spill_read_bytes_total", p.spill_read),
        ("dimstore_restores_total", p.restores),
        ("dimstore_respills_total", p.respills),
        ("dimstore_spill_failures_total", p.spill_failures),
    ] {
        assert_eq!(
            value(&samples, metric, &[]),
            Some(expected as f64),
            "{metric}"
        );
    }
    let write_seconds =
        value(&samples, "dimstore_spill_write_seconds_total", &[]).expect("write s");
    assert!(
        (write_seconds * 1e9 - p.spill_write_ns as f64).abs()
            <= 1.0 + p.spill_write_ns as f64 * 1e-9
    );
    assert_eq!(
        value(
            &samples,
            "dimstore_server_evictions_total",
            &[("cause", "consumed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "dimstore_server_evictions_total",
            &[("cause", "policy")]
        ),
        Some(0.0),
        "spilled, not evicted"
    );
}
