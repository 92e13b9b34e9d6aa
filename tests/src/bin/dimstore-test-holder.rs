//! Test helper: connects as a same-node client, then holds a mapped object (`lease KEY`) or
//! an unsealed reservation (`create SIZE`), prints `holding`, and waits to be killed (60 s
//! at most).

use std::io::Write;
use std::time::Duration;

use dimstore::{ClientConfig, LocalMode, Store};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, address, node, what, arg] = &args[..] else {
        eprintln!("usage: dimstore-test-holder ADDRESS NODE lease KEY | create SIZE");
        std::process::exit(2);
    };
    let config = ClientConfig {
        node: Some(node.clone()),
        local: LocalMode::Map,
        ..ClientConfig::default()
    };
    let store = Store::connect(address, config).expect("connect");
    let _held: Box<dyn std::any::Any> = match what.as_str() {
        "lease" => {
            let object = store.get(&arg.parse().expect("key")).expect("get");
            assert!(object.is_mapped(), "expected a mapped object");
            Box::new(object)
        }
        "create" => Box::new(store.create(arg.parse().expect("size")).expect("create")),
        other => panic!("unknown mode {other}"),
    };
    println!("holding");
    std::io::stdout().flush().expect("flush");
    std::thread::sleep(Duration::from_secs(60));
}
