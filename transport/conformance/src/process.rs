//! Running a case: bounded by a watchdog, in a child process when the fabric library needs
//! its environment at process start, skipped (or failed under CI) when the fabric is
//! unavailable; and the exporter process the cross-process case talks to.

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use dimstore_ffi_test_support::{hex, stdin_lines, tell, unhex, watchdog, Peer};
use dimstore_transport::TransportError;

use crate::fixtures::{arena, Object, MIB};
use crate::Harness;

/// A case (or a child or exporter process) is aborted after this.
pub(crate) const LIMIT: Duration = Duration::from_secs(120);
/// Names, in a child process, the case it runs.
const CASE_VARIABLE: &str = "DIMSTORE_CONFORMANCE_CASE";
/// Set in an exporter process.
const EXPORTER_VARIABLE: &str = "DIMSTORE_CONFORMANCE_EXPORTER";
/// Seed of the pattern the exporter process's object holds.
pub(crate) const EXPORTED_SEED: u8 = 7;

/// One case being run for one configuration.
#[derive(Debug)]
pub struct Case<H> {
    /// The configuration.
    pub harness: H,
    /// The instantiating module as the test binary names it (`ucx_tcp`; empty at the
    /// crate's root).
    module: String,
    /// The case's test name in the binary (`ucx_tcp::small_and_scattered_reads`).
    name: String,
}

/// Where an exporter process's object is.
#[derive(Debug)]
pub struct RemoteObject {
    /// The exporter's address.
    pub peer: Vec<u8>,
    /// The packed key of the object's segment.
    pub key: Vec<u8>,
    /// Remote address of the object's first byte.
    pub address: u64,
    /// The object's length; it holds `pattern(len, EXPORTED_SEED)`.
    pub len: usize,
}

impl<H: Harness> Case<H> {
    fn new(harness: H, module_path: &str, case: &str) -> Case<H> {
        // `module_path!()` starts with the test crate's name, which test names leave out.
        let module = module_path
            .split_once("::")
            .map_or("", |(_, rest)| rest)
            .to_owned();
        let name = match module.as_str() {
            "" => case.to_owned(),
            module => format!("{module}::{case}"),
        };
        Case {
            harness,
            module,
            name,
        }
    }

    /// The case's test name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts an exporter process of this configuration (this binary run again) and
    /// learns where its object is; the process is killed when the [`Peer`] drops.
    pub fn spawn_exporter(&self) -> (Peer, RemoteObject) {
        // A child process inherits the configuration's environment from this one.
        let test = format!("{}::exporter_process", self.module);
        let mut peer = Peer::spawn(&test, &[(EXPORTER_VARIABLE, "1")]);
        let remote = RemoteObject {
            peer: unhex(&peer.read("ADDR")),
            key: unhex(&peer.read("KEY")),
            address: peer.read("AT").parse().expect("remote address"),
            len: peer.read("LEN").parse().expect("length"),
        };
        (peer, remote)
    }
}

/// Runs `body` for the configuration `harness` as the test `case` of the module at
/// `module_path` (its `module_path!()`): in a child process if the configuration has an
/// environment, bounded by a watchdog; skipped (failed under CI) if the fabric is
/// unavailable here. Backends use it for their own, backend-specific cases too.
pub fn run<H: Harness>(harness: H, module_path: &str, case: &str, body: fn(&Case<H>)) {
    let case = Case::new(harness, module_path, case);
    if ran_in_child(&case.name, &case.harness.environment()) {
        return;
    }
    let _dog = watchdog(&case.name, LIMIT);
    match case.harness.exporter() {
        Ok(_) => {}
        Err(TransportError::Unavailable { reason, .. }) => {
            dimstore_tests::skip_or_fail(&case.name, &reason);
            return;
        }
        Err(e) => panic!("{}: starting an exporter failed: {e}", case.name),
    }
    body(&case);
}

/// The case `unusable_configuration_is_unavailable`: exporters and readers of the spoilt
/// configuration ([`Harness::unusable`]) fail with [`TransportError::Unavailable`] naming
/// the transport, in one sentence naming what is wrong.
pub fn run_unusable<H: Harness>(harness: H, module_path: &str) {
    let (unusable, named) = harness.unusable();
    let case = Case::new(
        unusable,
        module_path,
        "unusable_configuration_is_unavailable",
    );
    if ran_in_child(&case.name, &case.harness.environment()) {
        return;
    }
    let _dog = watchdog(&case.name, LIMIT);
    let transport = case.harness.transport();
    let exporter = case.harness.exporter().map(|_| ());
    eprintln!("exporter of an unusable configuration: {exporter:?}");
    match &exporter {
        Err(TransportError::Unavailable {
            transport: t,
            reason,
        }) => {
            assert_eq!(t, transport);
            assert!(reason.contains(named), "{reason:?} does not name {named:?}");
            assert!(!reason.contains('\n'), "not one sentence: {reason:?}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let reader = case.harness.reader(Default::default()).map(|_| ());
    assert!(
        matches!(&reader, Err(TransportError::Unavailable { transport: t, .. }) if t == transport),
        "{reader:?}"
    );
}

/// The exporter process of [`Case::spawn_exporter`] when this process is one; otherwise
/// it returns at once. It exports a 32 MiB object, says where it is on stdout and serves
/// (its fabric thread does) until its stdin closes or it is killed.
pub fn exporter_process<H: Harness>(harness: H) {
    if std::env::var_os(EXPORTER_VARIABLE).is_none() {
        return;
    }
    let _dog = watchdog("exporter_process", LIMIT);
    let exporter = harness.exporter().expect("exporter");
    let arena = arena(128 * MIB, 64 * MIB);
    let object = Object::new(&arena, &*exporter, 32 * MIB, EXPORTED_SEED);
    tell("ADDR", hex(&exporter.address()));
    tell("KEY", hex(&object.region.key));
    tell("AT", object.address);
    tell("LEN", object.bytes.len());
    let lines = stdin_lines();
    while lines.recv().is_ok() {}
}

/// Unless this process already is the child running the test `name` (or `environment` is
/// empty), runs `name` in a child process (this binary again) with `environment`, bounded
/// in time, asserts it passed and returns `true`.
fn ran_in_child(name: &str, environment: &[(&str, Option<&str>)]) -> bool {
    if environment.is_empty() || std::env::var(CASE_VARIABLE).is_ok_and(|n| n == name) {
        return false;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut command = Command::new(exe);
    command
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CASE_VARIABLE, name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for &(variable, value) in environment {
        match value {
            Some(value) => command.env(variable, value),
            None => command.env_remove(variable),
        };
    }
    let mut child = command.spawn().expect("spawn the child test process");
    let pipes = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ];
    let readers: Vec<_> = pipes
        .into_iter()
        .flatten()
        .map(|mut pipe| {
            thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        })
        .collect();
    let deadline = Instant::now() + LIMIT + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let output: Vec<String> = readers
        .into_iter()
        .map(|r| r.join().unwrap_or_default())
        .collect();
    // Shown by the harness when the test fails (or with --nocapture).
    println!(
        "--- child {name} {environment:?} ---\n{}",
        output.join("\n")
    );
    let status = status.unwrap_or_else(|| panic!("child {name} ran past {LIMIT:?}"));
    assert!(
        status.success(),
        "child {name} {environment:?} failed: {status}"
    );
    assert!(
        output[0].contains("1 passed"),
        "child {name} did not run its test"
    );
    true
}
