//! `dimstore-bench rdma --csv`: one line per row and size.

use std::fmt::Write as _;

use super::{RowResult, SizeResult, Variant};

/// The CSV header of `--csv`.
pub const CSV_HEADER: &str = "row,size_bytes,path,get_median_us,get_p99_us,get_mb_per_s,\
raw_read_tool,raw_read_us,raw_read_mb_per_s,own_read_tool,own_read_us,own_read_mb_per_s,\
raw_rtt_tool,raw_rtt_us,get_over_rtt,get_over_best_read_bw";

pub(super) fn csv(results: &[RowResult]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    let num = |v: Option<f64>, digits: usize| v.map_or(String::new(), |v| format!("{v:.digits$}"));
    for row in results {
        let (read_name, rtt_name) = row.variant.raw_names();
        let ucx = matches!(row.variant, Variant::Ucx | Variant::UcxShm);
        for s in &row.sizes {
            let path = match s.one_sided {
                Some(true) => "one_sided",
                Some(false) => "inline",
                None => "",
            };
            let (read_tool, own_tool) = if ucx {
                (read_name.to_string(), s_note("ucp_get (ours)", s))
            } else if row.variant == Variant::Tcp {
                (read_name.to_string(), String::new())
            } else {
                (s_note(read_name, s), String::new())
            };
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                row.variant.name(),
                s.size,
                path,
                num(s.get.map(|c| c.us), 3),
                num(s.get_p99_us, 3),
                num(s.get.map(|c| c.mb_per_s), 3),
                read_tool,
                num(s.read.map(|c| c.us), 3),
                num(s.read.map(|c| c.mb_per_s), 3),
                own_tool,
                num(s.own_read.map(|c| c.us), 3),
                num(s.own_read.map(|c| c.mb_per_s), 3),
                rtt_name,
                num(s.rtt.map(|c| c.us), 3),
                num(s.get_over_rtt(), 3),
                num(s.get_over_best_read(), 3),
            );
        }
    }
    out
}

/// A tool's name with the strategy its best came from (`fi_read (ours) whole`).
fn s_note(name: &str, s: &SizeResult) -> String {
    match &s.read_note {
        Some(n) => format!("{name} {n}"),
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rdma::results::tests::row;

    #[test]
    fn csv_has_one_line_per_size() {
        let text = csv(&[row()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[1].split(',').count(),
            CSV_HEADER.split(',').count(),
            "{}",
            lines[1]
        );
        assert!(lines[1].starts_with("ofi-tcp,8,inline,12.000,20.000,"));
        assert!(lines[1].contains(",fi_read (ours) whole,"), "{}", lines[1]);
        assert!(lines[2].contains(",one_sided,"));
    }
}
