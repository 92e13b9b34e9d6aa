//! Where libfabric cannot be loaded, querying providers fails with one sentence that says
//! so, and the dynamic loader's error as its source. Its own test binary: the library is
//! loaded at most once per process, and this process must never load it.

use std::error::Error;

use dimstore_ofi::{Info, InfoQuery};

#[test]
fn a_missing_library_is_one_typed_sentence() {
    let missing = "/nonexistent/dimstore-test/libfabric.so.1";
    // The only test in this process: nothing else reads the environment concurrently.
    std::env::set_var("DIMSTORE_OFI_LIB", missing);
    let Err(error) = Info::query(&InfoQuery::provider("tcp;ofi_rxm")) else {
        panic!("a provider was found without libfabric");
    };
    assert!(error.is_library_missing(), "{error:?}");
    assert!(!error.is_again() && !error.is_timeout());
    assert_eq!(
        error.to_string(),
        format!(
            "libfabric is not installed on this node: {missing} could not be loaded (install \
             libfabric or load its module, set DIMSTORE_OFI_LIB to its path, or choose another \
             transport)"
        )
    );
    let load = error.source().expect("the load error is the source");
    assert_eq!(load.to_string(), format!("{missing} could not be loaded"));
    let dlerror = load
        .source()
        .expect("the loader's error is its source")
        .to_string();
    assert!(dlerror.contains("No such file"), "{dlerror}");
}
