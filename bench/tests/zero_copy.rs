//! `dimstore-bench zero-copy --csv FILE` writes `path,size_bytes,median_us` rows for the
//! mapped path, the copy path and memcpy (a smoke run; no timing thresholds).

use std::process::Command;

#[test]
fn zero_copy_writes_a_row_per_path_and_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("zero-copy.csv");
    let put_csv = dir.path().join("put.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_dimstore-bench"))
        .args([
            "zero-copy",
            "--sizes",
            "8,1KiB,1MiB",
            "--cell-time",
            "100ms",
            "--csv",
        ])
        .arg(&csv)
        .arg("--put-csv")
        .arg(&put_csv)
        .output()
        .expect("run dimstore-bench");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&csv).expect("csv");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("path,size_bytes,median_us"));
    let rows: Vec<(String, u64, f64)> = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 3, "{l}");
            (
                f[0].to_string(),
                f[1].parse().expect("size"),
                f[2].parse().expect("us"),
            )
        })
        .collect();
    for path in ["mapped", "copy", "memcpy"] {
        for size in [8u64, 1024, 1 << 20] {
            let row = rows
                .iter()
                .find(|r| r.0 == path && r.1 == size)
                .unwrap_or_else(|| panic!("no {path} row for {size}: {rows:?}"));
            assert!(row.2 > 0.0, "{row:?}");
        }
    }
    assert_eq!(rows.len(), 9);
    let puts = std::fs::read_to_string(&put_csv).expect("put csv");
    assert_eq!(puts.lines().count(), 1 + 6, "{puts}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("mapped get"));
}
