//! What the pages chart, computed from execution records: counts, percentiles and cold-start
//! share, per app and per time bucket; drawn as inline SVG (no script needed to see them).

use maud::{Markup, html};

use crate::store::Execution;

/// The `q`-quantile (0–1) of `values` by nearest rank; `None` when there are none.
pub fn percentile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = (q * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

pub fn is_cold(e: &Execution) -> bool {
    e.cold_start_ms.is_some_and(|c| c > 0.0)
}

pub fn is_error(e: &Execution) -> bool {
    e.status != "succeeded" && e.status != "running"
}

/// A set of executions summed up.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub count: usize,
    pub errors: usize,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub cold: usize,
    pub cold_p50: Option<f64>,
    pub cold_p99: Option<f64>,
}

impl Summary {
    pub fn of<'a>(executions: impl IntoIterator<Item = &'a Execution>) -> Summary {
        let mut s = Summary::default();
        let (mut durations, mut colds) = (Vec::new(), Vec::new());
        for e in executions {
            s.count += 1;
            s.errors += usize::from(is_error(e));
            if let Some(d) = e.duration_ms {
                durations.push(d);
            }
            if is_cold(e) {
                s.cold += 1;
                colds.extend(e.cold_start_ms);
            }
        }
        s.p50 = percentile(&mut durations, 0.5);
        s.p99 = percentile(&mut durations, 0.99);
        s.cold_p50 = percentile(&mut colds, 0.5);
        s.cold_p99 = percentile(&mut colds, 0.99);
        s
    }

    /// Cold starts as a share of the executions, in percent.
    pub fn cold_share(&self) -> Option<f64> {
        (self.count > 0).then(|| 100.0 * self.cold as f64 / self.count as f64)
    }
}

/// `executions` in `n` equal buckets of `[from, to)` (ms since the epoch), each summed up.
pub fn buckets(executions: &[Execution], from: i64, to: i64, n: usize) -> Vec<Summary> {
    let width = ((to - from) / n as i64).max(1);
    let mut split: Vec<Vec<&Execution>> = vec![Vec::new(); n];
    for e in executions {
        if e.started_at >= from && e.started_at < to {
            let i = ((e.started_at - from) / width) as usize;
            split[i.min(n - 1)].push(e);
        }
    }
    split.into_iter().map(Summary::of).collect()
}

/// The last hour's invocations (bars) and errors (red, over them), in 12 five-minute buckets.
pub fn sparkline(buckets: &[Summary]) -> Markup {
    let (w, h) = (120.0, 28.0);
    let max = buckets.iter().map(|b| b.count).max().unwrap_or(0).max(1) as f64;
    let bar = w / buckets.len().max(1) as f64;
    let total: usize = buckets.iter().map(|b| b.count).sum();
    let errors: usize = buckets.iter().map(|b| b.errors).sum();
    let label = format!("{total} invocations and {errors} errors in the last hour");
    html! {
        svg.spark viewBox={"0 0 " (w) " " (h)} width=(w) height=(h) role="img" aria-label=(label) {
            title { (label) }
            @for (i, b) in buckets.iter().enumerate() {
                @let x = i as f64 * bar;
                @let hc = h * b.count as f64 / max;
                @let he = h * b.errors as f64 / max;
                rect.calls x=(x + 0.5) y=(h - hc) width=(bar - 1.0) height=(hc) {}
                @if b.errors > 0 {
                    rect.errors x=(x + 0.5) y=(h - he) width=(bar - 1.0) height=(he) {}
                }
            }
        }
    }
}

/// A line of the latency chart: its name, its CSS class, what it draws of a bucket.
type Series = (&'static str, &'static str, fn(&Summary) -> Option<f64>);

/// Duration and cold-start p50/p99 over time: four lines over `buckets`, a table of the same
/// numbers beside it for a screen reader.
pub fn latency_chart(buckets: &[Summary], from: i64, to: i64) -> Markup {
    let (w, h, pad) = (900.0, 220.0, 4.0);
    let series: [Series; 4] = [
        ("duration p50", "d50", |b| b.p50),
        ("duration p99", "d99", |b| b.p99),
        ("cold start p50", "c50", |b| b.cold_p50),
        ("cold start p99", "c99", |b| b.cold_p99),
    ];
    let max = buckets
        .iter()
        .flat_map(|b| series.iter().filter_map(|(_, _, f)| f(b)))
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let step = (w - 2.0 * pad) / (buckets.len().max(2) - 1) as f64;
    let point = |i: usize, v: f64| {
        format!(
            "{:.1},{:.1}",
            pad + i as f64 * step,
            h - pad - (h - 2.0 * pad) * v / max
        )
    };
    html! {
        figure.chart #latency-chart {
            svg viewBox={"0 0 " (w) " " (h)} role="img"
                aria-label="duration and cold-start p50 and p99 over the selected time range" {
                line.axis x1=(pad) y1=(h - pad) x2=(w - pad) y2=(h - pad) {}
                text.tick x=(pad + 2.0) y="14" { (super::layout::ms(Some(max))) }
                @for (_, class, f) in &series {
                    @let points: Vec<String> = buckets.iter().enumerate()
                        .filter_map(|(i, b)| f(b).map(|v| point(i, v))).collect();
                    @if points.len() == 1 {
                        @let (x, y) = points[0].split_once(',').unwrap_or(("0", "0"));
                        circle.(class) cx=(x) cy=(y) r="3" {}
                    } @else if !points.is_empty() {
                        polyline.(class) points=(points.join(" ")) {}
                    }
                }
            }
            figcaption {
                @for (name, class, _) in &series { span.key.(class) { (name) } }
                span.range { (super::layout::utc(from)) " – " (super::layout::utc(to)) " UTC" }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(started_at: i64, duration: f64, cold: f64, status: &str) -> Execution {
        let mut e = Execution::begun("id".into(), "o", "a", 1, "api");
        e.started_at = started_at;
        e.duration_ms = Some(duration);
        e.cold_start_ms = Some(cold);
        e.status = status.into();
        e
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.5), Some(50.0));
        assert_eq!(percentile(&mut v, 0.99), Some(99.0));
        assert_eq!(percentile(&mut [7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&mut [], 0.5), None);
    }

    #[test]
    fn buckets_split_by_start_time_and_count_cold_starts_and_errors() {
        let runs = [
            run(0, 1.0, 5.0, "succeeded"),
            run(10, 3.0, 0.0, "failed"),
            run(60, 2.0, 0.0, "succeeded"),
            run(120, 9.0, 0.0, "succeeded"),
        ];
        let b = buckets(&runs, 0, 120, 2);
        assert_eq!((b[0].count, b[0].errors, b[0].cold), (2, 1, 1));
        assert_eq!(b[0].cold_p50, Some(5.0));
        // The range's end is not in it.
        assert_eq!((b[1].count, b[1].p50), (1, Some(2.0)));
        let all = Summary::of(&runs);
        assert_eq!(all.cold_share(), Some(25.0));
    }
}
