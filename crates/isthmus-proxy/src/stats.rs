//! Envoy-style flat stats (`cluster.<name>.upstream_cx_total`) and Istio standard metrics.
//!
//! A small hand-rolled registry (BTreeMaps behind a mutex) keeps output deterministic and lets
//! `/stats` and `/stats/prometheus` render the same numbers in two encodings. Stats are keyed
//! by name, so they survive config updates like Envoy's do.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Envoy's default histogram buckets, which Istio's histograms use (ms for durations,
/// bytes for sizes).
pub const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Labels of an Istio standard metric, in Istio's emission order.
pub type Labels = Vec<(&'static str, String)>;

/// A pre-resolved Envoy-style counter or gauge: hot paths keep the handle and bump it without
/// the registry lock, a name lookup or an allocation.
pub type Counter = Arc<AtomicI64>;

/// A pre-resolved Istio counter series (one metric, one label set).
pub type IstioCounter = Arc<AtomicU64>;

/// One histogram series. Buckets are stored per bucket (not cumulative) so an observation
/// touches one bucket; rendering turns them into Prometheus' cumulative `le` buckets.
pub struct Hist {
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    /// f64 bits of the running sum (updated with a compare-and-swap loop).
    sum: AtomicU64,
    count: AtomicU64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }
    }
}

impl Hist {
    /// Record one value: the first bucket whose bound holds it (none above the last bound or
    /// for NaN: such values only count towards `+Inf`, as before).
    pub fn observe(&self, v: f64) {
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let mut cur = self.sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(cur) + v).to_bits();
            match self
                .sum
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative bucket counts (Prometheus `le` semantics), the sum and the count.
    fn snapshot(&self) -> ([u64; DURATION_BUCKETS.len()], f64, u64) {
        let mut acc = 0;
        let cum = std::array::from_fn(|i| {
            acc += self.buckets[i].load(Ordering::Relaxed);
            acc
        });
        (
            cum,
            f64::from_bits(self.sum.load(Ordering::Relaxed)),
            self.count.load(Ordering::Relaxed),
        )
    }
}

#[derive(Default)]
struct Inner {
    values: BTreeMap<String, Counter>,
    gauges: BTreeSet<String>,
    istio_counters: BTreeMap<(&'static str, Labels), IstioCounter>,
    istio_hist: BTreeMap<(&'static str, Labels), Arc<Hist>>,
}

/// The proxy's stats registry. The lock only guards the name → cell maps: values live in
/// atomic cells, so a caller holding a handle ([`Stats::counter`], [`Stats::istio_counter`],
/// [`Stats::istio_hist`]) never takes it, and name-based updates of existing stats do not
/// allocate.
#[derive(Default)]
pub struct Stats {
    inner: Mutex<Inner>,
    /// Per-stream label resolution cache of [`crate::telemetry`] (Istio series by stream facts).
    pub(crate) series_cache: crate::telemetry::SeriesCache,
}

impl Stats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cell(g: &mut Inner, name: &str) -> Counter {
        if let Some(c) = g.values.get(name) {
            return c.clone();
        }
        g.values.entry(name.to_string()).or_default().clone()
    }

    /// The counter cell for `name`, created at 0 if new (renders as a counter).
    pub fn counter(&self, name: &str) -> Counter {
        Self::cell(&mut self.lock(), name)
    }

    /// The gauge cell for `name`, created at 0 if new (renders as a gauge).
    pub fn gauge(&self, name: &str) -> Counter {
        let mut g = self.lock();
        if !g.gauges.contains(name) {
            g.gauges.insert(name.to_string());
        }
        Self::cell(&mut g, name)
    }

    /// Increment a counter by `n`.
    pub fn inc(&self, name: &str, n: u64) {
        let mut g = self.lock();
        match g.values.get(name) {
            Some(c) => {
                c.fetch_add(n as i64, Ordering::Relaxed);
            }
            None => {
                g.values
                    .insert(name.to_string(), Arc::new(AtomicI64::new(n as i64)));
            }
        }
    }

    /// Make sure a counter exists (renders as 0) so operators can see it before it moves.
    pub fn touch(&self, name: &str) {
        let mut g = self.lock();
        Self::cell(&mut g, name);
    }

    /// Add to a gauge (may be negative).
    pub fn gauge_add(&self, name: &str, d: i64) {
        self.gauge(name).fetch_add(d, Ordering::Relaxed);
    }

    pub fn gauge_set(&self, name: &str, v: i64) {
        self.gauge(name).store(v, Ordering::Relaxed);
    }

    pub fn get(&self, name: &str) -> i64 {
        self.lock()
            .values
            .get(name)
            .map(|c| c.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// The cell of one Istio counter series, created at 0 if new.
    pub fn istio_counter(&self, metric: &'static str, labels: &Labels) -> IstioCounter {
        let mut g = self.lock();
        if let Some(c) = g.istio_counters.get(&(metric, labels.clone())) {
            return c.clone();
        }
        g.istio_counters
            .entry((metric, labels.clone()))
            .or_default()
            .clone()
    }

    /// The cell of one Istio histogram series, created empty if new.
    pub fn istio_hist(&self, metric: &'static str, labels: &Labels) -> Arc<Hist> {
        self.lock()
            .istio_hist
            .entry((metric, labels.clone()))
            .or_default()
            .clone()
    }

    pub fn istio_inc(&self, metric: &'static str, labels: &Labels, n: u64) {
        self.istio_counter(metric, labels)
            .fetch_add(n, Ordering::Relaxed);
    }

    pub fn istio_observe(&self, metric: &'static str, labels: &Labels, v: f64) {
        self.istio_hist(metric, labels).observe(v);
    }

    /// Envoy `/stats` text: `name: value`, sorted, optionally filtered by a regex.
    pub fn render_text(&self, filter: Option<&regex::Regex>) -> String {
        let g = self.lock();
        let mut out = String::new();
        for (k, v) in &g.values {
            if filter.is_none_or(|f| f.is_match(k)) {
                let _ = writeln!(out, "{k}: {}", v.load(Ordering::Relaxed));
            }
        }
        for ((m, l), v) in &g.istio_counters {
            let name = format!("istiocustom.{m}{}", envoy_tags(l));
            if filter.is_none_or(|f| f.is_match(&name)) {
                let _ = writeln!(out, "{name}: {}", v.load(Ordering::Relaxed));
            }
        }
        out
    }

    /// Prometheus text exposition (what Envoy serves on `/stats/prometheus`).
    pub fn render_prometheus(&self) -> String {
        let g = self.lock();
        let mut out = String::new();
        let mut by_family: BTreeMap<String, Vec<(String, i64, bool)>> = BTreeMap::new();
        for (k, v) in &g.values {
            let (fam, labels) = prom_name(k);
            by_family.entry(fam).or_default().push((
                labels,
                v.load(Ordering::Relaxed),
                g.gauges.contains(k),
            ));
        }
        for (fam, rows) in &by_family {
            let ty = if rows.iter().any(|r| r.2) {
                "gauge"
            } else {
                "counter"
            };
            let _ = writeln!(out, "# TYPE {fam} {ty}");
            for (l, v, _) in rows {
                let _ = writeln!(out, "{fam}{l} {v}");
            }
        }
        let mut last = "";
        for ((m, l), v) in &g.istio_counters {
            if *m != last {
                let _ = writeln!(out, "# TYPE {m} counter");
                last = m;
            }
            let _ = writeln!(
                out,
                "{m}{{{}}} {}",
                prom_labels(l),
                v.load(Ordering::Relaxed)
            );
        }
        last = "";
        for ((m, l), h) in &g.istio_hist {
            if *m != last {
                let _ = writeln!(out, "# TYPE {m} histogram");
                last = m;
            }
            let base = prom_labels(l);
            let (buckets, sum, count) = h.snapshot();
            for (i, b) in DURATION_BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "{m}_bucket{{{base},le=\"{b}\"}} {}", buckets[i]);
            }
            let _ = writeln!(out, "{m}_bucket{{{base},le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "{m}_sum{{{base}}} {sum}");
            let _ = writeln!(out, "{m}_count{{{base}}} {count}");
        }
        out
    }
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn prom_labels(l: &Labels) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn envoy_tags(l: &Labels) -> String {
    l.iter().map(|(k, v)| format!(".{k}.{v}")).collect()
}

/// Map a flat Envoy stat name to a Prometheus family + labels the way Envoy's tag extractors do
/// for the prefixes we emit.
fn prom_name(k: &str) -> (String, String) {
    let sanitize = |s: &str| s.replace(['.', '-', '|', ':'], "_");
    if let Some(rest) = k.strip_prefix("cluster.") {
        // Cluster names contain dots (`outbound|443||a.b.c`): the stat is the known suffix.
        for suffix in CLUSTER_STAT_SUFFIXES {
            if let Some(name) = rest.strip_suffix(suffix).and_then(|n| n.strip_suffix('.')) {
                return (
                    format!("envoy_cluster_{}", sanitize(suffix)),
                    format!("{{cluster_name=\"{}\"}}", esc(name)),
                );
            }
        }
    }
    if let Some(rest) = k.strip_prefix("listener.") {
        if let Some((addr, stat)) = rest.rsplit_once('.') {
            return (
                format!("envoy_listener_{}", sanitize(stat)),
                format!("{{envoy_listener_address=\"{}\"}}", esc(addr)),
            );
        }
    }
    (format!("envoy_{}", sanitize(k)), String::new())
}

/// Every per-cluster stat name we emit (longest first where one is a suffix of another).
pub const CLUSTER_STAT_SUFFIXES: &[&str] = &[
    "outlier_detection.ejections_enforced_consecutive_gateway_failure",
    "outlier_detection.ejections_enforced_consecutive_5xx",
    "outlier_detection.ejections_enforced_total",
    "outlier_detection.ejections_active",
    "outlier_detection.ejections_overflow",
    "upstream_cx_max_duration_reached",
    "upstream_cx_connect_timeout",
    "upstream_cx_connect_fail",
    "upstream_cx_idle_timeout",
    "upstream_cx_max_requests",
    "upstream_cx_none_healthy",
    "upstream_cx_rx_bytes_total",
    "upstream_cx_tx_bytes_total",
    "upstream_cx_overflow",
    "upstream_cx_destroy",
    "upstream_cx_active",
    "upstream_cx_total",
    "upstream_rq_pending_overflow",
    "upstream_rq_pending_active",
    "upstream_rq_pending_total",
    "upstream_rq_retry_limit_exceeded",
    "upstream_rq_retry",
    "upstream_rq_timeout",
    "upstream_rq_active",
    "upstream_rq_total",
    "upstream_rq_2xx",
    "upstream_rq_3xx",
    "upstream_rq_4xx",
    "upstream_rq_5xx",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_rendering() {
        let s = Stats::default();
        s.inc("cluster.outbound|443||a.example.upstream_cx_total", 2);
        s.gauge_add("cluster.outbound|443||a.example.upstream_cx_active", 1);
        let l: Labels = vec![
            ("reporter", "source".into()),
            ("response_code", "200".into()),
        ];
        s.istio_inc("istio_requests_total", &l, 1);
        s.istio_observe("istio_request_duration_milliseconds", &l, 3.0);
        let p = s.render_prometheus();
        assert!(
            p.contains(
                "envoy_cluster_upstream_cx_total{cluster_name=\"outbound|443||a.example\"} 2"
            ),
            "{p}"
        );
        assert!(p.contains("# TYPE envoy_cluster_upstream_cx_active gauge"));
        assert!(p.contains("istio_requests_total{reporter=\"source\",response_code=\"200\"} 1"));
        assert!(p.contains("istio_request_duration_milliseconds_bucket{reporter=\"source\",response_code=\"200\",le=\"5\"} 1"));
        assert!(p.contains("istio_request_duration_milliseconds_bucket{reporter=\"source\",response_code=\"200\",le=\"1\"} 0"));
        let t = s.render_text(Some(&regex::Regex::new("cx_total").unwrap()));
        assert_eq!(t, "cluster.outbound|443||a.example.upstream_cx_total: 2\n");
    }
}
