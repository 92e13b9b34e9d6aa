//! One PNG per pattern: median time and bandwidth against object size (log-log), dimstore
//! and plain MPI side by side.
//!
//! Text needs a TrueType font: `DIMSTORE_BENCH_FONT`, else DejaVu Sans or Liberation Sans
//! from the usual system paths (Debian: `fonts-dejavu-core`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Context};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::{Pattern, Row, Transport};

/// Where system fonts usually are (Debian/Ubuntu, Fedora, Arch).
const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

const FONT: &str = "sans-serif";
const DIMSTORE_COLOR: RGBColor = RGBColor(0, 114, 178);
const MPI_COLOR: RGBColor = RGBColor(213, 94, 0);

/// Draws `rows` (one pattern, both transports) into a PNG at `path`.
pub fn draw(path: &Path, pattern: Pattern, rows: &[&Row]) -> anyhow::Result<()> {
    load_font()?;
    let first = rows.first().context("nothing to plot")?;
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let title = format!(
        "{}: {} ranks on {} nodes, dimstore vs plain MPI",
        pattern.name(),
        first.ranks,
        first.nodes
    );
    let root = root.titled(&title, (FONT, 26)).map_err(fail)?;
    let (left, right) = root.split_horizontally(700);
    let time = ("median time per iteration", "time (us)");
    panel(&left, rows, time, SeriesLabelPosition::UpperLeft, |r| {
        r.median_us
    })?;
    let bandwidth = ("bandwidth at the median", "MB/s");
    panel(
        &right,
        rows,
        bandwidth,
        SeriesLabelPosition::LowerRight,
        |r| r.mb_per_s,
    )?;
    root.present().map_err(fail)?;
    Ok(())
}

/// One log-log chart of `value` against size, one line per transport.
fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    rows: &[&Row],
    (caption, y_desc): (&str, &str),
    legend: SeriesLabelPosition,
    value: impl Fn(&Row) -> f64,
) -> anyhow::Result<()> {
    let mut sizes: Vec<f64> = rows.iter().map(|r| r.size_bytes as f64).collect();
    sizes.sort_by(f64::total_cmp);
    sizes.dedup();
    let xs = sizes.iter().copied();
    let ys = rows
        .iter()
        .map(|r| value(r))
        .filter(|y| y.is_finite() && *y > 0.0);
    let (x_lo, x_hi) = bounds(xs).context("no sizes")?;
    let (y_lo, y_hi) = bounds(ys).context("no finite values")?;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 20))
        .margin(18)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(
            // Label the measured sizes, not powers of ten.
            (x_lo / 1.5..x_hi * 1.5).log_scale().with_key_points(sizes),
            (y_lo / 2.0..y_hi * 2.0).log_scale(),
        )
        .map_err(fail)?;
    chart
        .configure_mesh()
        .x_desc("object size")
        .y_desc(y_desc)
        .x_label_formatter(&|x| short_size(*x))
        .y_label_formatter(&|y| short_number(*y))
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .draw()
        .map_err(fail)?;
    for (transport, color) in [
        (Transport::Dimstore, DIMSTORE_COLOR),
        (Transport::Mpi, MPI_COLOR),
    ] {
        let points: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.transport == transport)
            .map(|r| (r.size_bytes as f64, value(r)))
            .filter(|(_, y)| y.is_finite() && *y > 0.0)
            .collect();
        let label = match transport {
            Transport::Dimstore => "dimstore (put + key over MPI + get)",
            Transport::Mpi => "plain MPI",
        };
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))
            .map_err(fail)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 5, color.filled())))
            .map_err(fail)?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(fail)?;
    Ok(())
}

fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// `8 B`, `4 KiB`, `16 MiB` for axis labels (rounded).
fn short_size(bytes: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.0} {}", UNITS[unit])
}

/// `0.5`, `20`, `3k`, `12M` for axis labels.
fn short_number(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.0}M", v / 1e6),
        v if v >= 1e3 => format!("{:.0}k", v / 1e3),
        v if v >= 1.0 => format!("{v:.0}"),
        v => format!("{v:.2}"),
    }
}

/// Registers a system TrueType font under [`FONT`] once per process.
fn load_font() -> anyhow::Result<()> {
    static LOADED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let outcome = LOADED.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("DIMSTORE_BENCH_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from))
            .collect();
        let path = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
            "no TrueType font for the plot text: install fonts-dejavu-core or set \
             DIMSTORE_BENCH_FONT to a .ttf file"
                .to_string()
        })?;
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        // plotters keeps registered fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        register_font(FONT, FontStyle::Normal, bytes)
            .map_err(|_| format!("{} is not a usable TrueType font", path.display()))?;
        Ok(path.clone())
    });
    outcome.as_ref().map(|_| ()).map_err(|e| anyhow!("{e}"))
}

fn fail(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing failed: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_read_well() {
        assert_eq!(short_size(8.0), "8 B");
        assert_eq!(short_size(4096.0), "4 KiB");
        assert_eq!(short_size(16.0 * 1024.0 * 1024.0), "16 MiB");
        assert_eq!(short_number(2500.0), "2k");
        assert_eq!(short_number(0.25), "0.25");
    }

    #[test]
    fn a_plot_is_a_png() {
        if FONT_PATHS.iter().all(|p| !Path::new(p).is_file()) {
            eprintln!("no system font; skipping");
            return;
        }
        let rows: Vec<Row> = [8u64, 4096, 1 << 20]
            .iter()
            .flat_map(|&size| {
                [(Transport::Dimstore, 3.0), (Transport::Mpi, 1.0)].map(|(t, f)| Row {
                    pattern: Pattern::FanOut,
                    transport: t,
                    size_bytes: size,
                    ranks: 4,
                    nodes: 2,
                    iterations: 5,
                    median_us: f * (10.0 + size as f64 / 1000.0),
                    p99_us: 0.0,
                    mb_per_s: size as f64 / (f * (10.0 + size as f64 / 1000.0)),
                })
            })
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fan-out.png");
        draw(&path, Pattern::FanOut, &rows.iter().collect::<Vec<_>>()).expect("draw");
        let bytes = std::fs::read(&path).expect("png written");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    }
}
