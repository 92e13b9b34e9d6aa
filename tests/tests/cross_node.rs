//! One-sided gets between simulated nodes (network namespaces with their own IPC, mount and
//! PID namespaces: no shared memory crosses them), with UCX forced to tcp and libfabric to
//! tcp;ofi_rxm as on a cluster without RDMA NICs. Through the CLI surface users have:
//! `DIMSTORE_TRANSPORT=ucx dimstore get KEY -o FILE` on one node, `dimstore stat --json` on
//! the owner. Skipped loudly (failed under `CI=true`) without root.

mod testbed;

use std::time::Duration;

use dimstore_tests::json_transport_row;
use testbed::{Kind, Testbed};

#[test]
fn nodes_read_each_others_objects_one_sided_over_ucx_and_ofi() {
    if testbed::skip(
        "nodes_read_each_others_objects_one_sided_over_ucx_and_ofi",
        &[],
    ) {
        return;
    }
    let bed = Testbed::up(Kind::Nodes, 2);
    let rsh = testbed::script("netns-rsh");
    let script = format!(
        r#"set -e
        rsh={rsh}
        env="UCX_TLS=tcp DIMSTORE_OFI_PROVIDER='tcp;ofi_rxm' DIMSTORE_SPAWN=never"
        for i in 1 2; do
            $rsh n$i "$env setsid $B/dimstore-server --listen 10.200.1.$i:7100 --node n$i \
                --one-sided ucx,ofi --memory-limit 256MiB --local-socket none \
                --ready-file $S/ready-$i --log debug > $S/server-$i.log 2>&1 < /dev/null &"
        done
        for _ in $(seq 200); do
            [ -s $S/ready-1 ] && [ -s $S/ready-2 ] && break
            sleep 0.05
        done
        head -c 9000000 /dev/urandom > $S/in.bin
        key=$($rsh n1 "$env $B/dimstore --server 10.200.1.1:7100 put $S/in.bin")
        echo "key $key"
        for t in ucx ofi; do
            $rsh n2 "$env DIMSTORE_TRANSPORT=$t $B/dimstore --server 10.200.1.2:7100 get $key -o $S/out-$t.bin"
            cmp $S/in.bin $S/out-$t.bin && echo "$t bytes match"
        done
        $rsh n1 "$env $B/dimstore --server 10.200.1.1:7100 stat --json" > $S/stat.json
        for i in 1 2; do
            $rsh n$i "$env $B/dimstore --server 10.200.1.$i:7100 shutdown"
        done"#,
        rsh = rsh.display(),
    );
    let out = bed.sh(&script);
    let logs = || {
        ["server-1.log", "server-2.log"]
            .iter()
            .map(|f| std::fs::read_to_string(bed.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    assert!(out.status.success(), "{out}\n{}", logs());
    assert!(out.stdout.contains("ucx bytes match"), "{out}");
    assert!(out.stdout.contains("ofi bytes match"), "{out}");
    let stat: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(bed.path().join("stat.json")).expect("stat.json"),
    )
    .expect("stat JSON");
    for name in ["ucx", "ofi"] {
        let row = json_transport_row(&stat, name);
        assert_eq!(
            row["one_sided_bytes"], 9_000_000,
            "the owner served the object once over {name}: {stat}"
        );
    }
    assert_eq!(
        bed.wait_no_leftovers(Duration::from_secs(10)),
        Vec::<u32>::new()
    );
}
