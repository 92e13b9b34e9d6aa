//! Build script for `slurm-spank-sys`: finds `<slurm/spank.h>` and generates the bindings
//! with bindgen.
//!
//! Nothing is linked: a SPANK plugin is loaded into `srun`, `sbatch`, `salloc`, `slurmd` or
//! `slurmstepd`, which already contain every `spank_*` function it calls. Linking `libslurm`
//! would load a second copy of Slurm into those programs.

use std::env;
use std::path::{Path, PathBuf};
use std::process::exit;

/// Where distributions and source installs put Slurm's headers.
const INCLUDE_DIRS: [&str; 4] = [
    "/usr/include",
    "/usr/local/include",
    "/opt/slurm/include",
    "/usr/local/slurm/include",
];
/// Variable naming the directory that holds `slurm/spank.h`, when it is elsewhere.
const INCLUDE_VAR: &str = "SLURM_INCLUDE_DIR";
/// Debian/Ubuntu package that provides the headers.
const APT_PKG: &str = "libslurm-dev";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let header = manifest_dir.join("wrapper.h");
    println!("cargo:rerun-if-changed={}", header.display());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed={INCLUDE_VAR}");

    let include = find_include_dir();
    println!(
        "cargo:rerun-if-changed={}",
        include.join("slurm/spank.h").display()
    );
    let bindings = bindgen::Builder::default()
        .clang_arg(format!("-I{}", include.display()))
        .header(header.to_str().expect("non-UTF-8 path to wrapper.h"))
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .parse_callbacks(Box::new(RenameContextEnum))
        .rust_target(bindgen::RustTarget::stable(80, 0).expect("valid Rust target"))
        .allowlist_function("spank_.*|slurm_(info|error|verbose|debug|debug2|debug3|spank_log)")
        .allowlist_type("spank_.*|slurm_err_t")
        .allowlist_var("SLURM_VERSION_NUMBER|ESPANK_.*|SPANK_OPTION_MAXLEN|HAVE_S_CTX_.*")
        // The hooks (`slurm_spank_init`, ...) and the option table are what a plugin
        // defines, not what it calls.
        .blocklist_item(
            "slurm_spank_(init|job_prolog|init_post_opt|local_user_init|user_init\
            |task_init_privileged|task_init|task_post_fork|task_exit|job_epilog|slurmd_exit|exit)",
        )
        .blocklist_item("spank_options")
        .default_enum_style(bindgen::EnumVariation::NewType {
            is_bitfield: false,
            is_global: false,
        })
        .layout_tests(false)
        .generate_comments(true)
        .clang_arg("-fretain-comments-from-system-headers")
        .generate()
        .unwrap_or_else(|e| {
            fail(&format!(
                "slurm-spank-sys: bindgen failed on <slurm/spank.h>: {e}"
            ))
        });
    bindings
        .write_to_file(out_dir.join("bindings.rs"))
        .unwrap_or_else(|e| fail(&format!("slurm-spank-sys: cannot write bindings.rs: {e}")));
}

/// `enum spank_context` and the function `spank_context()` share a name, which C allows and
/// Rust does not: the enum becomes `spank_context_e` (its typedef `spank_context_t` stays).
#[derive(Debug)]
struct RenameContextEnum;

impl bindgen::callbacks::ParseCallbacks for RenameContextEnum {
    fn item_name(&self, item: bindgen::callbacks::ItemInfo<'_>) -> Option<String> {
        match item.kind {
            bindgen::callbacks::ItemKind::Type if item.name == "spank_context" => {
                Some("spank_context_e".to_owned())
            }
            _ => None,
        }
    }
}

/// The directory holding `slurm/spank.h`, or stops the build with one sentence that says
/// how to fix it.
fn find_include_dir() -> PathBuf {
    if let Some(dir) = env::var_os(INCLUDE_VAR).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if has_spank_h(&dir) {
            return dir;
        }
        fail(&format!(
            "slurm-spank-sys: {INCLUDE_VAR}={} has no slurm/spank.h",
            dir.display()
        ));
    }
    INCLUDE_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| has_spank_h(d))
        .unwrap_or_else(|| {
            fail(&format!(
                "slurm-spank-sys: <slurm/spank.h> not found in {}; install it with: \
                 apt-get install {APT_PKG} (or set {INCLUDE_VAR} to the directory that holds \
                 slurm/spank.h)",
                INCLUDE_DIRS.join(", ")
            ))
        })
}

fn has_spank_h(dir: &Path) -> bool {
    dir.join("slurm/spank.h").is_file()
}

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    exit(1)
}
