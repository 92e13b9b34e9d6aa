//! What `dimstore-bench rdma` measures, per row and size, and the ratios it reports.

use super::tools::ToolResult;
use super::Variant;

/// One measured value: microseconds per operation and bandwidth (10^6 B/s).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cell {
    /// Microseconds per operation.
    pub us: f64,
    /// 10^6 bytes per second.
    pub mb_per_s: f64,
}

impl From<ToolResult> for Cell {
    fn from(r: ToolResult) -> Cell {
        Cell {
            us: r.us,
            mb_per_s: r.mb_per_s,
        }
    }
}

impl Cell {
    pub(super) fn of_median(size: u64, median_us: f64) -> Cell {
        Cell {
            us: median_us,
            mb_per_s: size as f64 / median_us.max(1e-3),
        }
    }
}

/// One row's measurements at one size.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeResult {
    /// Object size.
    pub size: u64,
    /// dimstore get: median and size / median.
    pub get: Option<Cell>,
    /// dimstore get p99, us.
    pub get_p99_us: Option<f64>,
    /// Whether the owner counted one-sided bytes for these gets.
    pub one_sided: Option<bool>,
    /// Raw one-sided read.
    pub read: Option<Cell>,
    /// Our own raw one-sided read where the row's tool is someone else's (UCX rows:
    /// `ucp_get` over `dimstore-ucx`, next to `ucx_perftest`).
    pub own_read: Option<Cell>,
    /// Which strategy our own read's best came from (`whole`, `chunked`).
    pub read_note: Option<String>,
    /// Raw round trip.
    pub rtt: Option<Cell>,
}

/// Everything measured for one row.
#[derive(Debug, Clone)]
pub struct RowResult {
    /// Which row.
    pub variant: Variant,
    /// Per size.
    pub sizes: Vec<SizeResult>,
    /// Why parts were skipped or failed.
    pub notes: Vec<String>,
}

impl RowResult {
    pub(super) fn at(&mut self, size: u64) -> &mut SizeResult {
        let i = match self.sizes.iter().position(|s| s.size == size) {
            Some(i) => i,
            None => {
                self.sizes.push(SizeResult {
                    size,
                    get: None,
                    get_p99_us: None,
                    one_sided: None,
                    read: None,
                    own_read: None,
                    read_note: None,
                    rtt: None,
                });
                self.sizes.len() - 1
            }
        };
        &mut self.sizes[i]
    }

    pub(super) fn note(&mut self, text: String) {
        eprintln!("rdma {}: {text}", self.variant.name());
        self.notes.push(text);
    }
}

impl SizeResult {
    /// The raw one-sided read with the higher bandwidth (the row's tool or our own), and
    /// whether it is our own.
    pub fn best_read(&self) -> Option<(Cell, bool)> {
        match (self.read, self.own_read) {
            (Some(a), Some(b)) if b.mb_per_s > a.mb_per_s => Some((b, true)),
            (Some(a), _) => Some((a, false)),
            (None, Some(b)) => Some((b, true)),
            (None, None) => None,
        }
    }

    /// dimstore get / raw round trip (medians), if both were measured.
    pub fn get_over_rtt(&self) -> Option<f64> {
        ratio(self.get.map(|c| c.us), self.rtt.map(|c| c.us))
    }

    /// dimstore get bandwidth / the best raw one-sided read's, if both were measured.
    pub fn get_over_best_read(&self) -> Option<f64> {
        ratio(
            self.get.map(|c| c.mb_per_s),
            self.best_read().map(|(c, _)| c.mb_per_s),
        )
    }
}

/// A ratio measured at a size, and the reference it was taken against.
pub type SizedRatio = Option<(u64, f64, &'static str)>;

/// The smallest size's get against the raw round trip, and the largest one-sided size's
/// get bandwidth against the best raw one-sided read's: (small ratio, large share).
pub fn targets(row: &RowResult, one_sided_from: u64) -> (SizedRatio, SizedRatio) {
    let (read_name, rtt_name) = row.variant.raw_names();
    let small = row
        .sizes
        .iter()
        .min_by_key(|s| s.size)
        .and_then(|s| s.get_over_rtt().map(|r| (s.size, r, rtt_name)));
    let large = row
        .sizes
        .iter()
        .filter(|s| s.size >= one_sided_from)
        .max_by_key(|s| s.size)
        .and_then(|s| {
            let (_, own) = s.best_read()?;
            let name = if own { "ucp_get (ours)" } else { read_name };
            s.get_over_best_read().map(|r| (s.size, r, name))
        });
    (small, large)
}

/// Ratio `a / b`, if both exist.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A row of two sizes, one inline and one one-sided.
    pub(in crate::rdma) fn row() -> RowResult {
        let cell = |us: f64, size: u64| Some(Cell::of_median(size, us));
        RowResult {
            variant: Variant::OfiTcp,
            sizes: vec![
                SizeResult {
                    size: 8,
                    get: cell(12.0, 8),
                    get_p99_us: Some(20.0),
                    one_sided: Some(false),
                    read: cell(7.0, 8),
                    own_read: None,
                    read_note: Some("whole".into()),
                    rtt: cell(10.0, 8),
                },
                SizeResult {
                    size: 1 << 20,
                    get: cell(500.0, 1 << 20),
                    get_p99_us: None,
                    one_sided: Some(true),
                    read: cell(400.0, 1 << 20),
                    own_read: None,
                    read_note: None,
                    rtt: None,
                },
            ],
            notes: vec![],
        }
    }

    #[test]
    fn targets_use_the_smallest_and_largest_sizes() {
        let (small, large) = targets(&row(), 64 << 10);
        let (size, r, name) = small.expect("small");
        assert_eq!((size, name), (8, "fi_pingpong"));
        assert!((r - 1.2).abs() < 1e-9);
        let (size, r, _) = large.expect("large");
        assert_eq!(size, 1 << 20);
        assert!((r - 0.8).abs() < 1e-9);
    }
}
