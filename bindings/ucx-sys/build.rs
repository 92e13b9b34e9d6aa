//! Build script for `ucx-sys`: finds UCX's headers with pkg-config, generates the bindings
//! with bindgen (exported functions as a table resolved when libucp is loaded at runtime)
//! and compiles bindgen's C wrappers for UCX's `static inline` functions. Nothing of UCX is
//! linked.

use std::env;
use std::path::PathBuf;
use std::process::exit;

/// pkg-config module name and the oldest version accepted.
const PKG: &str = "ucx";
const MIN_VERSION: &str = "1.12";
/// Debian/Ubuntu package that provides the headers and the `.pc` file.
const APT_PKG: &str = "libucx-dev";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let header = manifest_dir.join("wrapper.h");
    println!("cargo:rerun-if-changed={}", header.display());
    println!("cargo:rerun-if-changed=build.rs");

    let lib = probe();

    let wrap_stem = out_dir.join("ucx_static_fns");
    let bindings = lib
        .include_paths
        .iter()
        .fold(bindgen::Builder::default(), |b, inc| {
            b.clang_arg(format!("-I{}", inc.display()))
        })
        .header(header.to_str().expect("non-UTF-8 path to wrapper.h"))
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .rust_target(bindgen::RustTarget::stable(80, 0).expect("valid Rust target"))
        .allowlist_function("ucp_.*|ucs_.*")
        .allowlist_type("ucp_.*|ucs_.*")
        .allowlist_var("UCP_.*|UCS_.*")
        .default_enum_style(bindgen::EnumVariation::NewType {
            is_bitfield: false,
            is_global: false,
        })
        // Flag sets (feature bits, `field_mask` bits, `*_flags` values) are OR-ed together.
        .bitfield_enum(
            "ucp_feature|ucp_wakeup_event_types|ucp_op_attr_t|ucp_am_recv_attr_t\
             |ucp_.*_field|ucp_.*_flags?(_t)?|ucs_.*_flags?(_t)?",
        )
        // Anonymous enums (e.g. `UCP_MEM_MAP_NONBLOCK`, `UCP_MEM_MAP_PROT_*`) have no type
        // to hang constants on: make them plain integer constants. For anonymous enums
        // bindgen matches this regex against the variant names; named enums are lowercase.
        .constified_enum("UCP_.*|UCS_.*")
        // `ucp_init` is `static inline` over the exported `ucp_init_version`: its wrapper
        // would reference that symbol at link time. lib.rs forwards it through the table.
        .blocklist_function("ucp_init")
        .wrap_static_fns(true)
        .wrap_static_fns_path(&wrap_stem)
        .layout_tests(false)
        .derive_default(true)
        // Keep the headers' doxygen comments as rustdoc (clang drops comments from system
        // headers unless told otherwise).
        .generate_comments(true)
        .clang_arg("-fretain-comments-from-system-headers")
        .generate()
        .unwrap_or_else(|e| fail(&format!("ucx-sys: bindgen failed on UCX headers: {e}")));
    // The library is loaded at runtime: its exported functions become a table (see
    // ffi-dynamic-gen); only the `static inline` wrappers below are linked.
    std::fs::write(
        out_dir.join("bindings.rs"),
        ffi_dynamic_gen::split_exported(&bindings.to_string()),
    )
    .unwrap_or_else(|e| fail(&format!("ucx-sys: cannot write bindings.rs: {e}")));

    // bindgen wrote `ucx_static_fns.c` with one exported `<name>__extern` function per
    // `static inline` function; compile it so those symbols exist at link time.
    let mut cc = cc::Build::new();
    cc.file(wrap_stem.with_extension("c"))
        .include(&manifest_dir)
        .includes(&lib.include_paths)
        .warnings(false);
    cc.compile("ucx_sys_static_fns");

    // Exposed to dependents' build scripts as DEP_UCP_INCLUDE / DEP_UCP_VERSION.
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

/// Finds UCX >= MIN_VERSION or stops the build with one sentence that says how to fix it.
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
                "ucx-sys: UCX >= {MIN_VERSION} not found by pkg-config (found: {found}); \
                 install it with: apt-get install {APT_PKG} pkg-config"
            ))
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    exit(1)
}
