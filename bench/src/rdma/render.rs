//! The tables `dimstore-bench rdma` prints: one per row, then the targets.

use std::fmt::Write as _;

use super::results::targets;
use super::{env_text, Cell, Plan, RowResult, Variant};
use crate::options::human_size;

/// The tables: one per row, then the targets.
pub(super) fn render(results: &[RowResult], plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nus: median per operation; MB/s: 10^6 B/s (size / median; ucx_perftest ucp_get: \
         its rate with many reads in flight); rtt: a message round trip of the same size; \
         get/read: get bandwidth / best raw one-sided read bandwidth (sizes >= {})",
        human_size(plan.one_sided_from)
    );
    for row in results {
        let v = row.variant;
        let (read_name, rtt_name) = v.raw_names();
        let own = matches!(v, Variant::Ucx | Variant::UcxShm);
        let _ = writeln!(
            out,
            "\n=== {} ({}) ===\nraw one-sided read: {read_name}{}; raw round trip: {rtt_name}",
            v.name(),
            env_text(v),
            if own { " and ucp_get (ours)" } else { "" }
        );
        let mut head = format!(
            "{:>9} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "size", "path", "get us", "get MB/s", "read us", "read MB/s"
        );
        if own {
            let _ = write!(head, " {:>9} {:>9}", "own us", "own MB/s");
        }
        let _ = write!(head, " {:>9} {:>8} {:>8}", "rtt us", "get/rtt", "get/read");
        let _ = writeln!(out, "{head}");
        for s in &row.sizes {
            let path = match (v, s.one_sided) {
                (Variant::Tcp, _) => "inline",
                (_, Some(true)) => "1-sided",
                (_, Some(false)) => "inline",
                (_, None) => "-",
            };
            let get_rtt = s.get_over_rtt();
            let share = s
                .get_over_best_read()
                .filter(|_| s.size >= plan.one_sided_from);
            let mut line = format!(
                "{:>9} {:>7} {:>9} {:>9} {:>9} {:>9}",
                human_size(s.size),
                path,
                us(s.get),
                mbs(s.get),
                us(s.read),
                mbs(s.read),
            );
            if own {
                let _ = write!(line, " {:>9} {:>9}", us(s.own_read), mbs(s.own_read));
            }
            let _ = write!(
                line,
                " {:>9} {:>8} {:>8}",
                us(s.rtt),
                get_rtt.map_or("-".into(), |r| format!("{r:.2}x")),
                share.map_or("-".into(), |r| format!("{:.0}%", 100.0 * r)),
            );
            let _ = writeln!(out, "{line}");
        }
        for note in &row.notes {
            let _ = writeln!(out, "  note: {note}");
        }
    }
    let _ = writeln!(out, "\nTargets (reported, not asserted)");
    let _ = writeln!(
        out,
        "{:<8} {:<46} {:>8} {:>7} {:>4}",
        "row", "comparison", "ratio", "target", "met"
    );
    for row in results {
        let (small, large) = targets(row, plan.one_sided_from);
        if let Some((size, r, name)) = small {
            let _ = writeln!(
                out,
                "{:<8} {:<46} {:>7.2}x {:>7} {:>4}",
                row.variant.name(),
                format!("get {} / {name}", human_size(size)),
                r,
                "<= 1.5x",
                if r <= 1.5 { "yes" } else { "NO" }
            );
        }
        if let Some((size, r, name)) = large {
            let _ = writeln!(
                out,
                "{:<8} {:<46} {:>7.0}% {:>7} {:>4}",
                row.variant.name(),
                format!("get {} bandwidth / {name}", human_size(size)),
                100.0 * r,
                ">= 85%",
                if r >= 0.85 { "yes" } else { "NO" }
            );
        }
    }
    out
}

fn us(c: Option<Cell>) -> String {
    c.map_or_else(|| "-".into(), |c| format!("{:.1}", c.us))
}

fn mbs(c: Option<Cell>) -> String {
    c.map_or_else(
        || "-".into(),
        |c| {
            if c.mb_per_s < 10.0 {
                format!("{:.2}", c.mb_per_s)
            } else {
                format!("{:.0}", c.mb_per_s)
            }
        },
    )
}
