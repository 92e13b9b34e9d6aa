//! What the plugin does in each hook, in safe code over [`crate::spank::Spank`].
//!
//! - `init` (srun, sbatch, salloc, slurmstepd): registers `--dimstore[=OPTIONS]`.
//! - `init_post_opt`, in srun/sbatch/salloc: when the option is given, picks the job's fleet
//!   token (the caller's `DIMSTORE_TOKEN`, else a fresh one) and passes it on twice: in the
//!   job control environment (the job prolog sees `SPANK_DIMSTORE_TOKEN`) and in the
//!   caller's environment (which Slurm hands to the job's steps and batch script).
//! - `job_prolog` (root, on each node as the job starts there): when the job has the option,
//!   starts the node's server as the job's user, outside any step, so it lives as long as
//!   the job.
//! - `init_post_opt` in slurmstepd (root, before the step's tasks): when the step has the
//!   option and no server runs (the option was given to this step only), starts it the same
//!   way, with the step's `DIMSTORE_TOKEN`.
//! - `user_init` (slurmstepd, before the tasks): waits for the server and exports
//!   `DIMSTORE_SERVER`, `DIMSTORE_TOKEN`, `DIMSTORE_RUNTIME_DIR`, `DIMSTORE_SPAWN=never`,
//!   `DIMSTORE_TRUSTED_HOSTS` (the job's nodes, whose servers may receive the token) and
//!   appends the dimstore binaries to `PATH`.
//! - `job_epilog` (root, on each node as the job ends): stops the server, removes its files.
//!
//! The prolog and epilog never fail (a failing prolog would drain the node); errors go to
//! the slurmd log. A step whose server cannot be had fails with the reason.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::config::{PluginConfig, ServerOptions};
use crate::job::{self, Ensured, Job, NodeDir, ServerSpec};
use crate::spank::{self, ArgKind, Context, Level, OptionSpec, Spank, SpankError};

/// Variable carrying the fleet token, to servers, steps and clients alike.
const TOKEN_VAR: &str = "DIMSTORE_TOKEN";

/// How long a server gets to exit at the job's end before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A hook's failure, logged by the caller (the panic boundary in `lib.rs`) with its causes
/// ([`with_causes`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    /// A SPANK call failed.
    #[error(transparent)]
    Spank(#[from] SpankError),
    /// The plugin's line in plugstack.conf, or the option, is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The node's server could not be had.
    #[error("job {job}: no dimstore server on this node")]
    Server {
        /// Job id.
        job: u32,
        /// The cause.
        source: job::JobError,
    },
}

/// `error` and each of its sources, `: `-separated: the variants' messages do not repeat
/// their sources, so this shows every cause once.
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

/// `--dimstore` as last seen by the option callback in this process: `None` if not given,
/// `Some(value)` if given (the value is `None` without `=OPTIONS`).
static SEEN: Mutex<Option<Option<String>>> = Mutex::new(None);

/// The option, as Slurm shows it in `--help`.
pub fn option_spec() -> OptionSpec {
    OptionSpec {
        name: c"dimstore",
        arginfo: c"OPTIONS",
        usage: c"Run a dimstore object server on every node of the job, for the job's \
            lifetime; tasks find it through DIMSTORE_SERVER. OPTIONS: comma-separated \
            memory=SIZE, threads=N, log=FILTER, listen=ADDR, advertise=ADDR.",
        arg: ArgKind::Optional,
        callback: Some(crate::option_callback),
    }
}

/// The option callback's work: validates and records the value.
///
/// # Errors
/// An unusable value (srun, sbatch and salloc then refuse the command line).
pub fn on_option(value: Option<&str>) -> Result<(), HookError> {
    ServerOptions::parse(value)?;
    let mut seen = SEEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *seen = Some(value.map(str::to_owned));
    Ok(())
}

fn seen_option() -> Option<Option<String>> {
    SEEN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// `slurm_spank_init`.
pub fn init(sp: &Spank, args: &[String]) -> Result<(), HookError> {
    match spank::context() {
        Context::Local | Context::Remote | Context::Allocator => {
            // Report a bad plugstack line once, where users see it.
            PluginConfig::parse(args)?;
            sp.register_option(&option_spec())?;
        }
        Context::Slurmd | Context::JobScript | Context::Unknown => {}
    }
    Ok(())
}

/// `slurm_spank_init_post_opt`.
pub fn init_post_opt(sp: &Spank, args: &[String]) -> Result<(), HookError> {
    let Some(value) = seen_option() else {
        return Ok(());
    };
    match spank::context() {
        Context::Local | Context::Allocator => {
            let token = std::env::var(TOKEN_VAR)
                .ok()
                .filter(|t| !t.is_empty())
                .unwrap_or_else(dimstore_host::new_token);
            // Fails once the job exists (srun inside an allocation): then the job's steps
            // get the token from the environment alone.
            if let Err(e) = sp.job_control_setenv(TOKEN_VAR, &token) {
                spank::log(Level::Debug, &format!("no job control environment: {e}"));
            }
            std::env::set_var(TOKEN_VAR, &token);
            Ok(())
        }
        Context::Remote => {
            let config = PluginConfig::parse(args)?;
            let job = job_of(sp)?;
            let host = dimstore_host::hostname();
            let dir = NodeDir::new(&config.runtime_dir, job.id, &host);
            if dir.running().is_some() {
                return Ok(());
            }
            let token = sp
                .getenv(TOKEN_VAR)?
                .filter(|t| !t.is_empty())
                .unwrap_or_else(dimstore_host::new_token);
            start(&config, &job, &host, value.as_deref(), token).map(|_| ())
        }
        Context::Slurmd | Context::JobScript | Context::Unknown => Ok(()),
    }
}

/// `slurm_spank_user_init`: export the node's server to the step's tasks.
pub fn user_init(sp: &Spank, args: &[String]) -> Result<(), HookError> {
    if spank::context() != Context::Remote {
        return Ok(());
    }
    let config = PluginConfig::parse(args)?;
    let job = job_of(sp)?;
    let host = dimstore_host::hostname();
    let dir = NodeDir::new(&config.runtime_dir, job.id, &host);
    // A step without the option still gets the job's server if one runs here.
    let ready = match (seen_option(), dir.running()) {
        (_, Some(ready)) => ready,
        (None, None) => return Ok(()),
        (Some(_), None) => {
            job::wait_ready(&dir, config.ready_timeout).map_err(|source| HookError::Server {
                job: job.id,
                source,
            })?
        }
    };
    let token = dir.token().unwrap_or_default();
    let runtime = job::job_dir(&config.runtime_dir, job.id);
    sp.setenv("DIMSTORE_SERVER", &ready.address)?;
    sp.setenv(TOKEN_VAR, &token)?;
    sp.setenv("DIMSTORE_RUNTIME_DIR", &runtime.to_string_lossy())?;
    sp.setenv("DIMSTORE_SPAWN", "never")?;
    // The token goes only to servers of the job: the servers of its nodes (their ports are
    // random), not to whatever host a key names.
    let nodes = match sp.getenv("SLURM_JOB_NODELIST")? {
        Some(nodes) => Some(nodes),
        None => sp.getenv("SLURM_NODELIST")?,
    };
    if let Some(nodes) = nodes.filter(|n| !n.is_empty()) {
        sp.setenv("DIMSTORE_TRUSTED_HOSTS", &nodes)?;
    }
    if let Some(bin_dir) = bin_dir(&config) {
        let path = sp.getenv("PATH")?.unwrap_or_default();
        if let Some(path) = path_with(&path, &bin_dir) {
            sp.setenv("PATH", &path)?;
        }
    }
    Ok(())
}

/// `slurm_spank_job_prolog`: start the node's server if the job asked for one.
pub fn job_prolog(sp: &Spank, args: &[String]) -> Result<(), HookError> {
    let Some(value) = sp.option(&option_spec()) else {
        return Ok(());
    };
    let config = PluginConfig::parse(args)?;
    let job = job_of(sp)?;
    let token = std::env::var(format!("SPANK_{TOKEN_VAR}"))
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| {
            spank::log(
                Level::Info,
                "no job token from srun/sbatch/salloc; using a token of this node's own",
            );
            dimstore_host::new_token()
        });
    let host = dimstore_host::hostname();
    if let Err(e) = start(&config, &job, &host, value.as_deref(), token) {
        // Never fail the prolog (the node would be drained): the job's steps report it.
        spank::log(Level::Error, &with_causes(&e));
    }
    Ok(())
}

/// `slurm_spank_job_epilog`: stop the node's server of this job, if any.
pub fn job_epilog(sp: &Spank, args: &[String]) -> Result<(), HookError> {
    let config = PluginConfig::parse(args).unwrap_or_default();
    let job_id = sp.job_id()?;
    let dir = NodeDir::new(&config.runtime_dir, job_id, &dimstore_host::hostname());
    if dir.path().exists() {
        let outcome = job::stop_server(&dir, STOP_GRACE);
        spank::log(Level::Info, &format!("job {job_id}: server {outcome:?}"));
    }
    Ok(())
}

fn job_of(sp: &Spank) -> Result<Job, SpankError> {
    Ok(Job {
        id: sp.job_id()?,
        uid: sp.job_uid()?,
        gid: sp.job_gid()?,
    })
}

/// Starts (or finds) the node's server of `job`.
fn start(
    config: &PluginConfig,
    job: &Job,
    host: &str,
    option: Option<&str>,
    token: String,
) -> Result<Ensured, HookError> {
    let options = ServerOptions::parse(option)?;
    let bin_dir = bin_dir(config);
    let bin = bin_dir.as_ref().map_or_else(
        || PathBuf::from("dimstore-server"),
        |d| d.join("dimstore-server"),
    );
    let default_path = "/usr/local/bin:/usr/bin:/bin";
    let spec = ServerSpec {
        bin,
        args: options.args(),
        token,
        path_env: bin_dir
            .as_deref()
            .and_then(|d| path_with(default_path, d))
            .unwrap_or_else(|| default_path.to_owned()),
        ready_timeout: config.ready_timeout,
    };
    let dir = NodeDir::new(&config.runtime_dir, job.id, host);
    let ensured =
        job::ensure_server(&dir, job, host, &spec).map_err(|source| HookError::Server {
            job: job.id,
            source,
        })?;
    if let Ensured::Started(ready) = &ensured {
        spank::log(
            Level::Info,
            &format!(
                "job {}: started server on {host} at {} (pid {})",
                job.id, ready.address, ready.pid
            ),
        );
    }
    Ok(ensured)
}

/// Where the dimstore binaries are: `bin_dir=`, else the plugin's own directory if the
/// server is there; `None`: look them up in `PATH`.
fn bin_dir(config: &PluginConfig) -> Option<PathBuf> {
    config.bin_dir.clone().or_else(|| {
        let dir = spank::plugin_path()?.parent()?.to_path_buf();
        dir.join("dimstore-server").is_file().then_some(dir)
    })
}

/// `path` with `dir` appended, or `None` if `dir` is in it already.
fn path_with(path: &str, dir: &Path) -> Option<String> {
    let dir = dir.to_string_lossy();
    if path.split(':').any(|p| p == dir) {
        return None;
    }
    Some(if path.is_empty() {
        dir.into_owned()
    } else {
        format!("{path}:{dir}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_logged_with_each_cause_once() {
        let spawn = job::JobError::Spawn {
            bin: "/opt/dimstore/bin/dimstore-server".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        };
        let error = HookError::Server {
            job: 42,
            source: spawn,
        };
        assert_eq!(
            with_causes(&error),
            "job 42: no dimstore server on this node: \
             cannot start /opt/dimstore/bin/dimstore-server: no such file"
        );
    }

    #[test]
    fn path_gets_the_bin_dir_once_at_the_end() {
        let dir = Path::new("/opt/dimstore/bin");
        assert_eq!(
            path_with("/usr/bin:/bin", dir).as_deref(),
            Some("/usr/bin:/bin:/opt/dimstore/bin")
        );
        assert_eq!(path_with("/opt/dimstore/bin:/bin", dir), None);
        assert_eq!(path_with("", dir).as_deref(), Some("/opt/dimstore/bin"));
    }

    #[test]
    fn the_option_is_validated_and_remembered() {
        assert!(on_option(Some("colour=blue")).is_err());
        on_option(Some("memory=1GiB")).expect("valid");
        assert_eq!(seen_option(), Some(Some("memory=1GiB".into())));
        on_option(None).expect("no value");
        assert_eq!(seen_option(), Some(None));
    }
}
