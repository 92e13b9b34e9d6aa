//! The sandbox: wasmi (an interpreter; chosen over wasmtime by build cost, see
//! docs/PERFORMANCE.md) with no WASI and no host functions but the `dimstore` interface.
//!
//! Host interface (module `dimstore`, integers little-endian wasm32):
//!
//! | import | meaning |
//! | --- | --- |
//! | `input_count() -> i32` | number of input objects |
//! | `input_len(i: i32) -> i64` | size of input `i` (-1: no such input) |
//! | `read(i: i32, offset: i64, dst: i32, len: i32) -> i32` | copies up to `len` bytes of input `i` from `offset` to guest memory at `dst`; returns how many (0 at the end), or -1 (no such input), -2 (offset past the end), -3 (`dst..dst+len` outside guest memory) |
//! | `arg_len() -> i32` | size of the call's argument |
//! | `read_arg(dst: i32)` | copies the argument to guest memory at `dst` (traps outside memory) |
//! | `output(ptr: i32, len: i32)` | appends guest memory `ptr..ptr+len` to the result (traps outside memory or over the output cap) |
//!
//! The module exports `memory` and the function called, `() -> i32` (0: ok; anything else
//! reaches the caller as `Failed { code }`).
//!
//! Deadline: fuel is handed out in slices; when a slice runs out the wall clock is checked
//! and the call resumed or stopped, so a guest looping without host calls stops within a
//! slice of its deadline.

use std::sync::Arc;
use std::time::Instant;

use dimstore_arena::Allocation;
use dimstore_proto::ModuleHash;

use crate::store::Object;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmi::errors::{ErrorKind, InstantiationError, MemoryError};
use wasmi::{
    Caller, Config, Engine, Extern, Linker, Memory, Module, Store, StoreLimits, StoreLimitsBuilder,
    TrapCode, TypedResumableCall,
};

use super::cache::ModuleCache;
use super::{FunctionConfig, InvokeError, Ran};

/// Fuel per slice: a few milliseconds of guest work between wall-clock checks.
const FUEL_SLICE: u64 = 20_000_000;

/// Largest table a guest may grow to (function references).
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Engine, host interface, module cache and concurrency cap of one server.
pub struct Runner {
    engine: Engine,
    linker: Arc<Linker<Host>>,
    cache: Arc<ModuleCache<Module>>,
    permits: Arc<Semaphore>,
    config: FunctionConfig,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("config", &self.config)
            .finish()
    }
}

/// Where a call's module comes from.
pub enum ModuleSource {
    /// Compiled already.
    Cached(Module),
    /// Sent with the call: hash-checked and compiled on the blocking thread, then cached.
    Bytes {
        /// The hash the request names it by.
        hash: ModuleHash,
        /// Its bytes, as received.
        bytes: Allocation,
    },
}

impl Runner {
    /// A runner with these limits.
    pub fn new(config: FunctionConfig) -> Runner {
        let mut engine_config = Config::default();
        engine_config.consume_fuel(true);
        let engine = Engine::new(&engine_config);
        Runner {
            linker: Arc::new(host_interface(&engine)),
            engine,
            cache: Arc::new(ModuleCache::new(config.cache)),
            permits: Arc::new(Semaphore::new(config.concurrency.max(1))),
            config,
        }
    }

    /// The compiled module cached under `hash`.
    pub fn cached(&self, hash: &ModuleHash) -> Option<Module> {
        self.cache.get(hash)
    }

    /// Modules cached and their total size.
    pub fn cached_size(&self) -> (u64, u64) {
        self.cache.size()
    }

    /// Waits for a free slot under the concurrency cap.
    pub async fn permit(&self) -> Result<OwnedSemaphorePermit, InvokeError> {
        Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|e| InvokeError::Internal(e.to_string()))
    }

    /// A call to run on a blocking thread.
    pub fn job(
        &self,
        module: ModuleSource,
        function: String,
        arg: Vec<u8>,
        inputs: Vec<Object>,
    ) -> Job {
        Job {
            engine: self.engine.clone(),
            linker: Arc::clone(&self.linker),
            cache: Arc::clone(&self.cache),
            config: self.config.clone(),
            module,
            function,
            arg,
            inputs,
        }
    }
}

/// One call, owning everything it needs (the inputs are leases).
pub struct Job {
    engine: Engine,
    linker: Arc<Linker<Host>>,
    cache: Arc<ModuleCache<Module>>,
    config: FunctionConfig,
    module: ModuleSource,
    function: String,
    arg: Vec<u8>,
    inputs: Vec<Object>,
}

impl Job {
    /// Compiles the module if needed, then runs the function to its end, its deadline, or
    /// its first failure.
    pub fn run(self) -> Result<Ran, InvokeError> {
        let deadline = Instant::now() + self.config.timeout;
        let module = match self.module {
            ModuleSource::Cached(module) => module,
            ModuleSource::Bytes { hash, bytes } => {
                let actual: ModuleHash = Sha256::digest(bytes.as_slice()).into();
                if actual != hash {
                    return Err(InvokeError::HashMismatch {
                        named: hash,
                        actual,
                    });
                }
                let module = Module::new(&self.engine, bytes.as_slice())
                    .map_err(|e| InvokeError::InvalidModule(e.to_string()))?;
                self.cache.insert(hash, module.clone(), bytes.len());
                module
            }
        };
        let host = Host {
            inputs: self.inputs,
            arg: self.arg,
            output: Vec::new(),
            output_cap: self.config.output,
            limits: guest_limits(self.config.memory),
            stop: None,
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|host| &mut host.limits);
        let config = &self.config;
        store
            .set_fuel(FUEL_SLICE)
            .map_err(|e| InvokeError::Internal(e.to_string()))?;
        let instance = self
            .linker
            .instantiate_and_start(&mut store, &module)
            .map_err(|e| classify(store.data(), &e, config))?;
        if instance.get_memory(&store, "memory").is_none() {
            return Err(InvokeError::InvalidModule(
                "the module exports no memory named `memory`".into(),
            ));
        }
        let function = instance
            .get_typed_func::<(), i32>(&store, &self.function)
            .map_err(|e| {
                InvokeError::InvalidModule(format!(
                    "no exported function `{}` of type () -> i32: {e}",
                    self.function
                ))
            })?;
        let mut call = function.call_resumable(&mut store, ());
        let code = loop {
            match call {
                Ok(TypedResumableCall::Finished(code)) => break code,
                Ok(TypedResumableCall::OutOfFuel(paused)) => {
                    if Instant::now() >= deadline {
                        return Err(InvokeError::Deadline(config.timeout));
                    }
                    store
                        .set_fuel(FUEL_SLICE)
                        .map_err(|e| InvokeError::Internal(e.to_string()))?;
                    call = paused.resume(&mut store);
                }
                Ok(TypedResumableCall::HostTrap(trap)) => {
                    return Err(match store.data().stop.clone() {
                        Some(stop) => stop,
                        None => InvokeError::Trapped(trap.host_error().to_string()),
                    });
                }
                Err(e) => return Err(classify(store.data(), &e, config)),
            }
        };
        if code != 0 {
            return Ok(Ran::Failed(code));
        }
        Ok(Ran::Output(std::mem::take(&mut store.data_mut().output)))
    }
}

/// The typed error of a failed call: what the host recorded, else the engine's trap.
fn classify(host: &Host, error: &wasmi::Error, config: &FunctionConfig) -> InvokeError {
    if let Some(stop) = &host.stop {
        return stop.clone();
    }
    match (error.as_trap_code(), error.kind()) {
        (Some(TrapCode::OutOfFuel), _) => InvokeError::Deadline(config.timeout),
        (Some(TrapCode::GrowthOperationLimited), _)
        | (_, ErrorKind::Memory(MemoryError::ResourceLimiterDeniedAllocation))
        | (
            _,
            ErrorKind::Instantiation(InstantiationError::FailedToInstantiateMemory(
                MemoryError::ResourceLimiterDeniedAllocation,
            )),
        ) => InvokeError::MemoryLimit(config.memory),
        (Some(_), _) => InvokeError::Trapped(error.to_string()),
        (None, _) => InvokeError::InvalidModule(error.to_string()),
    }
}

/// The guest's limits: memory capped (growing past it traps), one memory, one table.
fn guest_limits(memory: u64) -> StoreLimits {
    StoreLimitsBuilder::new()
        .memory_size(usize::try_from(memory).unwrap_or(usize::MAX))
        .table_elements(MAX_TABLE_ELEMENTS)
        .instances(1)
        .memories(1)
        .tables(1)
        .trap_on_grow_failure(true)
        .build()
}

/// What the host functions see of one call.
struct Host {
    /// Leases on the input objects.
    inputs: Vec<Object>,
    arg: Vec<u8>,
    output: Vec<u8>,
    output_cap: u64,
    limits: StoreLimits,
    /// Why the host stopped the call, when it did.
    stop: Option<InvokeError>,
}

/// A host function's reason to trap.
#[derive(Debug)]
struct HostTrap(String);

impl std::fmt::Display for HostTrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl wasmi::errors::HostError for HostTrap {}

fn trap(message: impl Into<String>) -> wasmi::Error {
    wasmi::Error::host(HostTrap(message.into()))
}

/// The guest's exported memory.
fn memory(caller: &Caller<'_, Host>) -> Result<Memory, wasmi::Error> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Ok(memory),
        _ => Err(trap("the module exports no memory named `memory`")),
    }
}

/// `ptr..ptr+len` of guest memory of `size` bytes, if inside.
fn guest_range(ptr: i32, len: i32, size: usize) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(ptr as u32).ok()?;
    let len = usize::try_from(len).ok()?;
    let end = start.checked_add(len)?;
    (end <= size).then_some(start..end)
}

/// `read`'s error values.
mod read_error {
    pub const NO_SUCH_INPUT: i32 = -1;
    pub const OFFSET_PAST_END: i32 = -2;
    pub const OUTSIDE_MEMORY: i32 = -3;
}

/// The `dimstore` imports.
fn host_interface(engine: &Engine) -> Linker<Host> {
    let mut linker = Linker::new(engine);
    let module = "dimstore";
    let defined = [
        linker
            .func_wrap(module, "input_count", |caller: Caller<'_, Host>| -> i32 {
                caller.data().inputs.len() as i32
            })
            .map(|_| ()),
        linker
            .func_wrap(
                module,
                "input_len",
                |caller: Caller<'_, Host>, i: i32| -> i64 {
                    usize::try_from(i)
                        .ok()
                        .and_then(|i| caller.data().inputs.get(i))
                        .map_or(-1, |input| input.len() as i64)
                },
            )
            .map(|_| ()),
        linker
            .func_wrap(
                module,
                "read",
                |mut caller: Caller<'_, Host>,
                 i: i32,
                 offset: i64,
                 dst: i32,
                 len: i32|
                 -> Result<i32, wasmi::Error> {
                    let memory = memory(&caller)?;
                    let (guest, host) = memory.data_and_store_mut(&mut caller);
                    let Some(input) = usize::try_from(i).ok().and_then(|i| host.inputs.get(i))
                    else {
                        return Ok(read_error::NO_SUCH_INPUT);
                    };
                    let input = input.as_slice();
                    let Some(from) = usize::try_from(offset).ok().filter(|&o| o <= input.len())
                    else {
                        return Ok(read_error::OFFSET_PAST_END);
                    };
                    let Some(to) = guest_range(dst, len, guest.len()) else {
                        return Ok(read_error::OUTSIDE_MEMORY);
                    };
                    let n = to.len().min(input.len() - from);
                    guest[to.start..to.start + n].copy_from_slice(&input[from..from + n]);
                    Ok(n as i32)
                },
            )
            .map(|_| ()),
        linker
            .func_wrap(module, "arg_len", |caller: Caller<'_, Host>| -> i32 {
                caller.data().arg.len() as i32
            })
            .map(|_| ()),
        linker
            .func_wrap(
                module,
                "read_arg",
                |mut caller: Caller<'_, Host>, dst: i32| -> Result<(), wasmi::Error> {
                    let memory = memory(&caller)?;
                    let (guest, host) = memory.data_and_store_mut(&mut caller);
                    let len = host.arg.len() as i32;
                    let Some(to) = guest_range(dst, len, guest.len()) else {
                        return Err(trap("read_arg: destination outside guest memory"));
                    };
                    guest[to].copy_from_slice(&host.arg);
                    Ok(())
                },
            )
            .map(|_| ()),
        linker
            .func_wrap(
                module,
                "output",
                |mut caller: Caller<'_, Host>, ptr: i32, len: i32| -> Result<(), wasmi::Error> {
                    let memory = memory(&caller)?;
                    let (guest, host) = memory.data_and_store_mut(&mut caller);
                    let Some(from) = guest_range(ptr, len, guest.len()) else {
                        return Err(trap("output: source outside guest memory"));
                    };
                    if (host.output.len() + from.len()) as u64 > host.output_cap {
                        host.stop = Some(InvokeError::OutputLimit(host.output_cap));
                        return Err(trap("output over the limit"));
                    }
                    host.output.extend_from_slice(&guest[from]);
                    Ok(())
                },
            )
            .map(|_| ()),
    ];
    for result in defined {
        // The names are distinct and the signatures fixed: defining them cannot fail.
        result.expect("defining the dimstore host functions");
    }
    linker
}
