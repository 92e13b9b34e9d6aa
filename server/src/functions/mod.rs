//! Functions next to the data: a client ships a WebAssembly module, the owner runs one of
//! its functions in a sandbox over the objects' bytes and returns the (small) result.
//!
//! - The host interface (module `dimstore`) is in [`sandbox`]: inputs stream through `read`,
//!   so an object of any size needs no guest memory of its size.
//! - Modules are compiled once and cached by the SHA-256 of their bytes ([`cache`]); a call
//!   naming an unknown hash answers `ModuleUnknown` and the client sends the bytes.
//! - Every call runs on a blocking thread (never on the runtime's workers), at most
//!   [`FunctionConfig::concurrency`] at a time, holding leases on its inputs so an evict
//!   meanwhile never frees bytes under it. It is stopped at its deadline, its memory and
//!   output are capped, and each failure is a typed error ([`InvokeError`]).
//!
//! Built without the `functions` feature, [`Functions`] refuses every call with
//! `FunctionsDisabled`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dimstore_arena::Allocation;
use dimstore_proto::{ErrorReply, FunctionStats, Invoke, ModuleHash, Status};

use crate::store::Object;

#[cfg(feature = "functions")]
mod cache;
#[cfg(feature = "functions")]
mod sandbox;

/// Largest module a client may send (its WebAssembly bytes).
pub const MAX_MODULE: u64 = 16 << 20;

/// Limits of the sandbox, fixed at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionConfig {
    /// Wall-clock deadline of one call (compiling a module not cached included).
    pub timeout: Duration,
    /// Most linear memory a guest may have.
    pub memory: u64,
    /// Most output bytes a call may produce.
    pub output: u64,
    /// Calls running at once; more wait their turn.
    pub concurrency: usize,
    /// Most bytes of modules (their WebAssembly size) kept compiled; least recently used
    /// go first.
    pub cache: u64,
}

impl Default for FunctionConfig {
    /// 60 s per call, 256 MiB of guest memory and of output, one call per CPU, 256 MiB of
    /// cached modules.
    fn default() -> Self {
        FunctionConfig {
            timeout: Duration::from_secs(60),
            memory: 256 << 20,
            output: 256 << 20,
            concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            cache: 256 << 20,
        }
    }
}

/// Why an invocation failed (each maps to a [`Status`] on the wire).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvokeError {
    /// Functions are off on this server (or it was built without them).
    #[error("this server does not run functions (--functions off, or built without them)")]
    Disabled,
    /// The hash names no cached module: the client sends the bytes.
    #[error("module {} is not cached here: send its bytes", hex(.0))]
    ModuleUnknown(ModuleHash),
    /// The module's bytes do not hash to the name the request gave them.
    #[error("the module's bytes hash to {}, not {}", hex(.actual), hex(.named))]
    HashMismatch {
        /// Hash in the request.
        named: ModuleHash,
        /// Hash of the bytes sent.
        actual: ModuleHash,
    },
    /// The module is larger than [`MAX_MODULE`].
    #[error("a module of {0} bytes exceeds the limit of {MAX_MODULE} bytes")]
    ModuleTooLarge(u64),
    /// The module is not valid, does not fit the host interface, or lacks the function.
    #[error("invalid module: {0}")]
    InvalidModule(String),
    /// The function trapped.
    #[error("the function trapped: {0}")]
    Trapped(String),
    /// The function ran past its deadline.
    #[error("the function ran past its deadline of {0:?} and was stopped")]
    Deadline(Duration),
    /// The guest asked for more memory than the cap.
    #[error("the function asked for more than {0} bytes of memory")]
    MemoryLimit(u64),
    /// The function's output went over the cap.
    #[error("the function's output went over the limit of {0} bytes")]
    OutputLimit(u64),
    /// The request was inconsistent (payload without a module, ...).
    #[error("{0}")]
    BadRequest(String),
    /// The blocking task running the call failed (a bug).
    #[error("internal error running the function: {0}")]
    Internal(String),
}

impl InvokeError {
    /// The status a client sees.
    pub fn status(&self) -> Status {
        match self {
            InvokeError::Disabled => Status::FunctionsDisabled,
            InvokeError::ModuleUnknown(_) => Status::ModuleUnknown,
            InvokeError::HashMismatch { .. } | InvokeError::BadRequest(_) => Status::BadRequest,
            InvokeError::ModuleTooLarge(_) => Status::TooLarge,
            InvokeError::InvalidModule(_) => Status::InvalidModule,
            InvokeError::Trapped(_) => Status::FunctionTrapped,
            InvokeError::Deadline(_) => Status::FunctionDeadline,
            InvokeError::MemoryLimit(_) | InvokeError::OutputLimit(_) => Status::FunctionLimit,
            InvokeError::Internal(_) => Status::Internal,
        }
    }
}

impl From<InvokeError> for ErrorReply {
    fn from(e: InvokeError) -> Self {
        ErrorReply::new(e.status(), e.to_string())
    }
}

/// Lower-case hex of a hash, for messages.
fn hex(hash: &ModuleHash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a function that ran to its end produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Ran {
    /// It returned 0 with this output.
    Output(Vec<u8>),
    /// It returned this nonzero code.
    Failed(i32),
}

/// Counters behind [`FunctionStats`].
#[derive(Debug, Default)]
struct Counters {
    invocations: AtomicU64,
    failures: AtomicU64,
    modules_received: AtomicU64,
    cache_hits: AtomicU64,
    running: AtomicU64,
}

/// The server's function runner: `None` inside when functions are off.
#[derive(Debug)]
pub struct Functions {
    #[cfg(feature = "functions")]
    runner: Option<sandbox::Runner>,
    counters: Counters,
}

/// A call checked and ready to run: its module (cached or to compile) and its request.
pub struct Call {
    #[cfg(feature = "functions")]
    module: sandbox::ModuleSource,
    function: String,
    arg: Vec<u8>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("function", &self.function)
            .field("arg_len", &self.arg.len())
            .finish()
    }
}

impl Functions {
    /// A runner with these limits, or one refusing every call (`None`).
    pub fn new(config: Option<FunctionConfig>) -> Functions {
        #[cfg(not(feature = "functions"))]
        let _ = config;
        Functions {
            #[cfg(feature = "functions")]
            runner: config.map(sandbox::Runner::new),
            counters: Counters::default(),
        }
    }

    /// Whether calls are accepted.
    pub fn enabled(&self) -> bool {
        #[cfg(feature = "functions")]
        return self.runner.is_some();
        #[cfg(not(feature = "functions"))]
        false
    }

    /// Checks the size of a module about to arrive as payload, before memory is allocated
    /// for it.
    pub fn check_module_len(&self, len: u64) -> Result<(), InvokeError> {
        if !self.enabled() {
            return Err(InvokeError::Disabled);
        }
        if len > MAX_MODULE {
            return Err(InvokeError::ModuleTooLarge(len));
        }
        Ok(())
    }

    /// Checks a request on the connection's task (cheap): the module is known, or its bytes
    /// came with it. Counted as an invocation.
    pub fn prepare(
        &self,
        invoke: Invoke,
        mut payload: Vec<Allocation>,
    ) -> Result<Call, InvokeError> {
        let c = &self.counters;
        c.invocations.fetch_add(1, Ordering::Relaxed);
        let checked = self.check(&invoke, &mut payload);
        if checked.is_err() {
            c.failures.fetch_add(1, Ordering::Relaxed);
        }
        #[cfg(feature = "functions")]
        let module = checked?;
        #[cfg(not(feature = "functions"))]
        checked?;
        Ok(Call {
            #[cfg(feature = "functions")]
            module,
            function: invoke.function,
            arg: invoke.arg,
        })
    }

    #[cfg(feature = "functions")]
    fn check(
        &self,
        invoke: &Invoke,
        payload: &mut Vec<Allocation>,
    ) -> Result<sandbox::ModuleSource, InvokeError> {
        let Some(runner) = &self.runner else {
            return Err(InvokeError::Disabled);
        };
        match (invoke.with_module, payload.pop(), payload.is_empty()) {
            (true, Some(bytes), true) => {
                self.counters
                    .modules_received
                    .fetch_add(1, Ordering::Relaxed);
                Ok(sandbox::ModuleSource::Bytes {
                    hash: invoke.module,
                    bytes,
                })
            }
            (false, None, _) => match runner.cached(&invoke.module) {
                Some(module) => {
                    self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                    Ok(sandbox::ModuleSource::Cached(module))
                }
                None => Err(InvokeError::ModuleUnknown(invoke.module)),
            },
            _ => Err(InvokeError::BadRequest(
                "an invoke carries its module as its only payload piece, when with_module is set"
                    .into(),
            )),
        }
    }

    #[cfg(not(feature = "functions"))]
    fn check(&self, _invoke: &Invoke, _payload: &mut Vec<Allocation>) -> Result<(), InvokeError> {
        Err(InvokeError::Disabled)
    }

    /// Runs a prepared call over `inputs` (leases, held until it ends) on a blocking thread,
    /// once one of the concurrency cap's permits is free.
    pub async fn run(&self, call: Call, inputs: Vec<Object>) -> Result<Ran, InvokeError> {
        let result = self.run_counted(call, inputs).await;
        let failed = !matches!(result, Ok(Ran::Output(_)));
        if failed {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    #[cfg(feature = "functions")]
    async fn run_counted(&self, call: Call, inputs: Vec<Object>) -> Result<Ran, InvokeError> {
        let Some(runner) = &self.runner else {
            return Err(InvokeError::Disabled);
        };
        let permit = runner.permit().await?;
        let running = &self.counters.running;
        running.fetch_add(1, Ordering::Relaxed);
        let job = runner.job(call.module, call.function, call.arg, inputs);
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job.run()
        })
        .await
        .unwrap_or_else(|e| Err(InvokeError::Internal(e.to_string())));
        running.fetch_sub(1, Ordering::Relaxed);
        result
    }

    #[cfg(not(feature = "functions"))]
    async fn run_counted(&self, _call: Call, _inputs: Vec<Object>) -> Result<Ran, InvokeError> {
        Err(InvokeError::Disabled)
    }

    /// Counters for the server's statistics.
    pub fn stats(&self) -> FunctionStats {
        let c = &self.counters;
        #[cfg(feature = "functions")]
        let (cached_modules, cached_bytes) =
            self.runner.as_ref().map_or((0, 0), |r| r.cached_size());
        #[cfg(not(feature = "functions"))]
        let (cached_modules, cached_bytes) = (0, 0);
        FunctionStats {
            invocations: c.invocations.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            modules_received: c.modules_received.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            cached_modules,
            cached_bytes,
            running: c.running.load(Ordering::Relaxed),
        }
    }
}
