//! Build script for `libfabric-sys`: finds libfabric's headers with pkg-config, generates the
//! bindings with bindgen (exported functions as a table resolved when libfabric is loaded at
//! runtime) and compiles bindgen's C wrappers for libfabric's `static inline` functions
//! (nearly every `fi_*` call is one: they dispatch through the object's ops tables). Nothing
//! of libfabric is linked.

use std::collections::HashMap;
use std::env;
use std::path::{Path, PathBuf};
use std::process::exit;

use bindgen::callbacks::{IntKind, ParseCallbacks};

/// pkg-config module name and the oldest version accepted.
const PKG: &str = "libfabric";
const MIN_VERSION: &str = "1.15";
/// Debian/Ubuntu package that provides the headers and the `.pc` file.
const APT_PKG: &str = "libfabric-dev";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let header = manifest_dir.join("wrapper.h");
    println!("cargo:rerun-if-changed={}", header.display());
    println!("cargo:rerun-if-changed=build.rs");

    let lib = probe();

    let macro_kinds = MacroKinds::from_headers(&header, &lib.include_paths);

    let wrap_stem = out_dir.join("libfabric_static_fns");
    let bindings = lib
        .include_paths
        .iter()
        .fold(bindgen::Builder::default(), |b, inc| {
            b.clang_arg(format!("-I{}", inc.display()))
        })
        .header(header.to_str().expect("non-UTF-8 path to wrapper.h"))
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .parse_callbacks(Box::new(macro_kinds))
        .rust_target(bindgen::RustTarget::stable(80, 0).expect("valid Rust target"))
        .allowlist_function("fi_.*")
        .allowlist_type("fi_.*|fid_.*")
        .allowlist_var("FI_.*")
        .default_enum_style(bindgen::EnumVariation::NewType {
            is_bitfield: false,
            is_global: false,
        })
        // Anonymous enums (e.g. the `FI_*` option names, `FI_MR_*` bits) have no type to
        // hang constants on: make them plain integer constants. For anonymous enums bindgen
        // matches this regex against the variant names; named enums are lowercase.
        .constified_enum("FI_.*")
        // `fi_allocinfo` is `static inline` over the exported `fi_dupinfo`: its wrapper would
        // reference that symbol at link time. lib.rs forwards it through the table.
        .blocklist_function("fi_allocinfo")
        .wrap_static_fns(true)
        .wrap_static_fns_path(&wrap_stem)
        .layout_tests(false)
        .derive_default(true)
        // Keep the headers' doxygen comments as rustdoc (clang drops comments from system
        // headers unless told otherwise).
        .generate_comments(true)
        .clang_arg("-fretain-comments-from-system-headers")
        .generate()
        .unwrap_or_else(|e| {
            fail(&format!(
                "libfabric-sys: bindgen failed on libfabric headers: {e}"
            ))
        });
    // The library is loaded at runtime: its exported functions become a table (see
    // ffi-dynamic-gen); only the `static inline` wrappers below are linked.
    std::fs::write(
        out_dir.join("bindings.rs"),
        ffi_dynamic_gen::split_exported(&bindings.to_string()),
    )
    .unwrap_or_else(|e| fail(&format!("libfabric-sys: cannot write bindings.rs: {e}")));

    // bindgen wrote `libfabric_static_fns.c` with one exported `<name>__extern` function per
    // `static inline` function; compile it so those symbols exist at link time.
    let mut cc = cc::Build::new();
    cc.file(wrap_stem.with_extension("c"))
        .include(&manifest_dir)
        .includes(&lib.include_paths)
        .warnings(false);
    cc.compile("libfabric_sys_static_fns");

    // Exposed to dependents' build scripts as DEP_FABRIC_INCLUDE / DEP_FABRIC_VERSION.
    let includes: Vec<String> = lib
        .include_paths
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    println!(
        "cargo:include={}",
        env::join_paths(&includes)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    println!("cargo:version={}", lib.version);
}

/// Gives each integer `FI_*` macro the Rust type of its C expression, which bindgen alone
/// does not: it would make `FI_MSG` (`1ULL << 1`) a `u32` but `FI_SOURCE` (`1ULL << 57`) a
/// `u64`, so caps and flags could not be OR-ed together or stored in `u64` fields.
#[derive(Debug)]
struct MacroKinds(HashMap<String, IntKind>);

impl MacroKinds {
    /// Classifies the macros from the preprocessor's `-dM` dump of `header`:
    /// - `unsigned long long` literals (`1ULL << n`), the `FI_ORDER_*` masks (whose fields are
    ///   `uint64_t`) and aliases of those: `u64`;
    /// - `unsigned` literals (`1U << 31`) and the `FI_*_VERSION` numbers (inputs of
    ///   `FI_VERSION`): `u32`;
    /// - everything else (error numbers, `FI_MR_*` mode bits, sizes): `c_int`, as in C.
    fn from_headers(header: &Path, include_paths: &[PathBuf]) -> Self {
        let mut cmd = cc::Build::new()
            .cargo_metadata(false)
            .get_compiler()
            .to_command();
        cmd.args(include_paths.iter().map(|p| format!("-I{}", p.display())));
        cmd.arg("-E").arg("-dM").arg(header);
        let out = cmd.output().unwrap_or_else(|e| {
            fail(&format!(
                "libfabric-sys: cannot run the C preprocessor: {e}"
            ))
        });
        if !out.status.success() {
            fail(&format!(
                "libfabric-sys: the C preprocessor failed on wrapper.h: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let defines: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("#define "))
            .filter_map(|l| l.split_once(' '))
            .filter(|(name, _)| name.starts_with("FI_") && !name.contains('('))
            .map(|(name, body)| (name, body.trim()))
            .collect();
        let mut kinds: HashMap<String, IntKind> = defines
            .iter()
            .map(|&(name, body)| {
                let kind = if body.contains("ULL") || name.starts_with("FI_ORDER_") {
                    IntKind::U64
                } else if body.contains("1U") || name.ends_with("_VERSION") {
                    IntKind::UInt
                } else {
                    IntKind::Int
                };
                (name.to_owned(), kind)
            })
            .collect();
        // Aliases (`#define FI_TRANSMIT FI_SEND`) take their target's type.
        for &(name, body) in &defines {
            if let Some(&kind) = kinds.get(body) {
                kinds.insert(name.to_owned(), kind);
            }
        }
        Self(kinds)
    }
}

impl ParseCallbacks for MacroKinds {
    fn int_macro(&self, name: &str, _value: i64) -> Option<IntKind> {
        self.0.get(name).copied()
    }
}

/// Finds libfabric >= MIN_VERSION or stops the build with one sentence that says how to fix it.
fn probe() -> pkg_config::Library {
    match pkg_config::Config::new()
        .atleast_version(MIN_VERSION)
        .cargo_metadata(false)
        .env_metadata(true)
        .probe(PKG)
    {
        Ok(lib) => lib,
        Err(_) => {
            let found = match pkg_config::Config::new().cargo_metadata(false).probe(PKG) {
                Ok(lib) => format!("{PKG} {}", lib.version),
                Err(pkg_config::Error::Command { .. }) => "no pkg-config program".to_owned(),
                Err(_) => "nothing".to_owned(),
            };
            fail(&format!(
                "libfabric-sys: libfabric >= {MIN_VERSION} not found by pkg-config (found: {found}); \
                 install it with: apt-get install {APT_PKG} pkg-config"
            ))
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    exit(1)
}
