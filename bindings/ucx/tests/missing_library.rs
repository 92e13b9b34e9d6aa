//! Where UCX cannot be loaded, creating a context fails with one sentence that says so, and
//! the dynamic loader's error as its source. Its own test binary: the library is loaded at
//! most once per process, and this process must never load it.

use std::error::Error;

use dimstore_ucx::{Context, ContextConfig};

#[test]
fn a_missing_library_is_one_typed_sentence() {
    let missing = "/nonexistent/dimstore-test/libucp.so.0";
    // The only test in this process: nothing else reads the environment concurrently.
    std::env::set_var("DIMSTORE_UCX_LIB", missing);
    let Err(error) = Context::new(&ContextConfig::from_env()) else {
        panic!("a context was created without UCX");
    };
    assert!(error.is_library_missing(), "{error:?}");
    assert!(!error.is_peer_failure());
    assert_eq!(
        error.to_string(),
        format!(
            "UCX is not installed on this node: {missing} could not be loaded (install UCX or \
             load its module, set DIMSTORE_UCX_LIB to its path, or choose another transport)"
        )
    );
    let load = error.source().expect("the load error is the source");
    assert_eq!(load.to_string(), format!("{missing} could not be loaded"));
    let dlerror = load
        .source()
        .expect("the loader's error is its source")
        .to_string();
    assert!(dlerror.contains("No such file"), "{dlerror}");
    // Still missing on a second try (failures are not cached, the answer is the same).
    let again = Context::new(&ContextConfig::from_env())
        .err()
        .expect("still missing");
    assert!(again.is_library_missing());
}
