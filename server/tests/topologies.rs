//! Placement decided on real machine topologies (hwloc XML, `tests/topologies/`), loaded
//! through hwloc's XML import: which CPUs, NUMA nodes and fabric device `--cpu-bind auto`,
//! `--numa N` and CPU lists choose. Computed, not applied: these NICs do not exist here.

use std::path::PathBuf;

use dimstore_server::placement::{decide, load_xml_topology, Decision, Plan};
use dimstore_server::CpuBind;

fn topology(name: &str) -> hwlocality::Topology {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/topologies")
        .join(name);
    load_xml_topology(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn bound(plan: Plan) -> Decision {
    match plan {
        Plan::Bind(decision) => decision,
        Plan::Nothing(reason) => panic!("expected a binding, got none: {reason}"),
    }
}

fn range(lo: u32, hi: u32) -> Option<Vec<u32>> {
    Some((lo..=hi).collect())
}

#[test]
fn polaris_auto_binds_to_the_domain_of_the_nic_in_use() {
    let t = topology("polaris.xml");
    let d = bound(decide(&t, &CpuBind::Auto, None, Some("hsn0")).expect("hsn0"));
    assert_eq!((d.cpus.clone(), d.numa.clone()), (range(8, 15), vec![1]));
    assert_eq!(d.fabric, ["cxi0"]);
    assert_eq!(d.describe(), "cpus 8-15 (numa 1, near hsn0; fabric cxi0)");

    let d = bound(decide(&t, &CpuBind::Auto, None, Some("hsn1")).expect("hsn1"));
    assert_eq!(
        (d.cpus, d.numa, d.fabric),
        (range(24, 31), vec![3], vec!["cxi1".to_string()])
    );

    // The management interface sits on domain 0, which has no fabric device.
    let d = bound(decide(&t, &CpuBind::Auto, None, Some("eno1")).expect("eno1"));
    assert_eq!((d.cpus, d.numa), (range(0, 7), vec![0]));
    assert!(d.fabric.is_empty(), "{:?}", d.fabric);
}

#[test]
fn polaris_numa_and_lists_pick_their_domains_nic() {
    let t = topology("polaris.xml");
    for (node, cpus, fabric) in [
        (1, range(8, 15), vec!["cxi0"]),
        (2, range(16, 23), vec![]),
        (3, range(24, 31), vec!["cxi1"]),
    ] {
        let d = bound(decide(&t, &CpuBind::Auto, Some(node), None).expect("--numa"));
        assert_eq!(
            (d.cpus, d.numa, d.fabric),
            (
                cpus,
                vec![node],
                fabric.iter().map(|s| s.to_string()).collect()
            )
        );
        assert_eq!(d.reason, "--numa");
    }
    // --numa without auto: memory only, CPUs unbound; the fabric is still reported.
    let d = bound(decide(&t, &CpuBind::None, Some(3), None).expect("--numa 3"));
    assert_eq!(
        (d.cpus.clone(), d.fabric.clone()),
        (None, vec!["cxi1".to_string()])
    );
    assert_eq!(
        d.describe(),
        "cpus unbound, memory numa 3 (--numa; fabric cxi1)"
    );
    // A list spanning two domains sees both NICs.
    let d = bound(decide(&t, &CpuBind::List(vec![8, 9, 24]), None, None).expect("list"));
    assert_eq!(
        (d.numa, d.fabric),
        (vec![1, 3], vec!["cxi0".to_string(), "cxi1".to_string()])
    );
    // Nodes and CPUs the machine does not have are typed errors.
    assert!(decide(&t, &CpuBind::Auto, Some(4), None).is_err());
    assert!(decide(&t, &CpuBind::List(vec![32]), None, None).is_err());
}

#[test]
fn infiniband_two_sockets_bind_to_the_hca_socket() {
    let t = topology("infiniband-2socket.xml");
    let d = bound(decide(&t, &CpuBind::Auto, None, Some("ib0")).expect("ib0"));
    assert_eq!((d.cpus, d.numa), (range(16, 31), vec![1]));
    assert_eq!(d.fabric, ["mlx5_0"]);
    let d = bound(decide(&t, &CpuBind::Auto, None, Some("eno1")).expect("eno1"));
    assert_eq!((d.cpus, d.numa), (range(0, 15), vec![0]));
    assert!(d.fabric.is_empty());
    let d = bound(decide(&t, &CpuBind::Auto, Some(1), None).expect("--numa 1"));
    assert_eq!(d.fabric, ["mlx5_0"]);
}

#[test]
fn a_node_without_nic_binds_nothing_under_auto_and_says_why() {
    let t = topology("no-nic.xml");
    match decide(&t, &CpuBind::Auto, None, Some("eth0")).expect("auto") {
        Plan::Nothing(reason) => assert!(reason.contains("no device for eth0"), "{reason}"),
        Plan::Bind(d) => panic!("bound without a NIC: {d:?}"),
    }
    // Explicit requests still bind; there is no fabric to report.
    let d = bound(decide(&t, &CpuBind::Auto, Some(1), None).expect("--numa 1"));
    assert_eq!((d.cpus, d.numa, d.fabric), (range(4, 7), vec![1], vec![]));
    assert_eq!(
        decide(&t, &CpuBind::None, None, None).expect("none"),
        Plan::Nothing("--cpu-bind none".into())
    );
}
