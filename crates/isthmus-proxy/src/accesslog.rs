//! Access log in Istio's default TEXT format (and its JSON twin).
//!
//! The text format is Istio's `EnvoyTextLogFormat` rendered field by field; every empty value
//! prints `-` as Envoy does. One [`LogEntry`] is filled per HTTP request or TCP connection and
//! written when the stream ends.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::config::{AccessLogConfig, LogEncoding};

/// Every value Istio's default format prints. `None` renders as `-` (text) / `null` (JSON).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogEntry {
    pub start_time: Option<SystemTime>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub protocol: Option<String>,
    pub response_code: u16,
    pub response_flags: Vec<&'static str>,
    pub response_code_details: Option<String>,
    pub connection_termination_details: Option<String>,
    pub upstream_transport_failure_reason: Option<String>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration_ms: u64,
    pub upstream_service_time: Option<u64>,
    pub x_forwarded_for: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub authority: Option<String>,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<String>,
    pub upstream_local_address: Option<SocketAddr>,
    pub downstream_local_address: Option<SocketAddr>,
    pub downstream_remote_address: Option<SocketAddr>,
    pub requested_server_name: Option<String>,
    pub route_name: Option<String>,
}

/// Envoy's `%START_TIME%` default: `2022-10-18T20:16:39.453Z`.
pub fn format_start_time(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        dt.year(),
        dt.month() as u8,
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.millisecond()
    )
}

fn d(v: &Option<String>) -> &str {
    match v.as_deref() {
        Some(s) if !s.is_empty() => s,
        _ => "-",
    }
}

fn da(v: &Option<SocketAddr>) -> String {
    v.map(|a| a.to_string()).unwrap_or_else(|| "-".to_string())
}

impl LogEntry {
    pub fn flags(&self) -> String {
        if self.response_flags.is_empty() {
            "-".to_string()
        } else {
            self.response_flags.join(",")
        }
    }

    pub fn add_flag(&mut self, f: &'static str) {
        if !self.response_flags.contains(&f) {
            self.response_flags.push(f);
        }
    }

    /// The exact Istio TEXT line, newline included.
    pub fn format_text(&self) -> String {
        format!(
            "[{}] \"{} {} {}\" {} {} {} {} \"{}\" {} {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} {} {} {} {} {}\n",
            self.start_time.map(format_start_time).unwrap_or_else(|| "-".into()),
            d(&self.method),
            d(&self.path),
            d(&self.protocol),
            self.response_code,
            self.flags(),
            d(&self.response_code_details),
            d(&self.connection_termination_details),
            d(&self.upstream_transport_failure_reason),
            self.bytes_received,
            self.bytes_sent,
            self.duration_ms,
            self.upstream_service_time.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
            d(&self.x_forwarded_for),
            d(&self.user_agent),
            d(&self.request_id),
            d(&self.authority),
            da(&self.upstream_host),
            d(&self.upstream_cluster),
            da(&self.upstream_local_address),
            da(&self.downstream_local_address),
            da(&self.downstream_remote_address),
            d(&self.requested_server_name),
            d(&self.route_name),
        )
    }

    /// Istio's `EnvoyJSONLogFormatIstio` keys, one JSON object per line.
    pub fn format_json(&self) -> String {
        use serde_json::{json, Value};
        let s = |v: &Option<String>| match v.as_deref() {
            Some(x) if !x.is_empty() => Value::String(x.to_string()),
            _ => Value::Null,
        };
        let a = |v: &Option<SocketAddr>| {
            v.map(|x| Value::String(x.to_string()))
                .unwrap_or(Value::Null)
        };
        let mut m = serde_json::Map::new();
        m.insert(
            "start_time".into(),
            self.start_time
                .map(|t| json!(format_start_time(t)))
                .unwrap_or(Value::Null),
        );
        m.insert("route_name".into(), s(&self.route_name));
        m.insert("method".into(), s(&self.method));
        m.insert("path".into(), s(&self.path));
        m.insert("protocol".into(), s(&self.protocol));
        m.insert("response_code".into(), json!(self.response_code));
        m.insert("response_flags".into(), json!(self.flags()));
        m.insert(
            "response_code_details".into(),
            s(&self.response_code_details),
        );
        m.insert(
            "connection_termination_details".into(),
            s(&self.connection_termination_details),
        );
        m.insert("bytes_received".into(), json!(self.bytes_received));
        m.insert("bytes_sent".into(), json!(self.bytes_sent));
        m.insert("duration".into(), json!(self.duration_ms));
        m.insert(
            "upstream_service_time".into(),
            self.upstream_service_time
                .map(|v| json!(v.to_string()))
                .unwrap_or(Value::Null),
        );
        m.insert("x_forwarded_for".into(), s(&self.x_forwarded_for));
        m.insert("user_agent".into(), s(&self.user_agent));
        m.insert("request_id".into(), s(&self.request_id));
        m.insert("authority".into(), s(&self.authority));
        m.insert("upstream_host".into(), a(&self.upstream_host));
        m.insert("upstream_cluster".into(), s(&self.upstream_cluster));
        m.insert(
            "upstream_local_address".into(),
            a(&self.upstream_local_address),
        );
        m.insert(
            "downstream_local_address".into(),
            a(&self.downstream_local_address),
        );
        m.insert(
            "downstream_remote_address".into(),
            a(&self.downstream_remote_address),
        );
        m.insert(
            "requested_server_name".into(),
            s(&self.requested_server_name),
        );
        m.insert(
            "upstream_transport_failure_reason".into(),
            s(&self.upstream_transport_failure_reason),
        );
        let mut out = Value::Object(m).to_string();
        out.push('\n');
        out
    }
}

enum Target {
    Stdout,
    File(std::fs::File),
    Memory(Arc<Mutex<Vec<String>>>),
    Off,
}

/// Where access log lines go. Cheap to clone; writes are serialised by a mutex.
#[derive(Clone)]
pub struct AccessLogSink {
    target: Arc<Mutex<Target>>,
    encoding: LogEncoding,
    /// Nothing is written (`Target::Off`): callers skip building log-only fields.
    off: bool,
}

impl AccessLogSink {
    pub fn off() -> Self {
        AccessLogSink {
            target: Arc::new(Mutex::new(Target::Off)),
            encoding: LogEncoding::Text,
            off: true,
        }
    }

    /// Keep lines in memory (tests, `/config_dump` debugging).
    pub fn memory(encoding: LogEncoding) -> (Self, Arc<Mutex<Vec<String>>>) {
        let buf = Arc::new(Mutex::new(Vec::new()));
        (
            AccessLogSink {
                target: Arc::new(Mutex::new(Target::Memory(buf.clone()))),
                encoding,
                off: false,
            },
            buf,
        )
    }

    pub fn from_config(c: &AccessLogConfig) -> std::io::Result<Self> {
        let target = if c.path.is_empty() || c.path == "/dev/stdout" {
            Target::Stdout
        } else {
            Target::File(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&c.path)?,
            )
        };
        Ok(AccessLogSink {
            target: Arc::new(Mutex::new(target)),
            encoding: c.encoding,
            off: false,
        })
    }

    /// Whether lines are written at all (fields only the log shows need not be built).
    pub fn is_on(&self) -> bool {
        !self.off
    }

    pub fn write(&self, e: &LogEntry) {
        let mut t = self.target.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(*t, Target::Off) {
            return;
        }
        let line = match self.encoding {
            LogEncoding::Text => e.format_text(),
            LogEncoding::Json => e.format_json(),
        };
        match &mut *t {
            Target::Stdout => {
                let _ = std::io::stdout().lock().write_all(line.as_bytes());
            }
            Target::File(f) => {
                if let Err(err) = f.write_all(line.as_bytes()) {
                    tracing::warn!(error = %err, "access log write failed");
                }
            }
            Target::Memory(m) => m.lock().unwrap_or_else(|p| p.into_inner()).push(line),
            Target::Off => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn tcp_blackhole_line_matches_reference_shape() {
        let e = LogEntry {
            start_time: Some(UNIX_EPOCH + Duration::from_millis(1_666_124_199_453)),
            response_flags: vec!["UH"],
            duration_ms: 0,
            upstream_cluster: Some("BlackHoleCluster".into()),
            downstream_local_address: Some("10.0.0.1:443".parse().unwrap()),
            downstream_remote_address: Some("10.0.0.2:5555".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(
            e.format_text(),
            "[2022-10-18T20:16:39.453Z] \"- - -\" 0 UH - - \"-\" 0 0 0 - \"-\" \"-\" \"-\" \"-\" \"-\" BlackHoleCluster - 10.0.0.1:443 10.0.0.2:5555 - -\n"
        );
    }

    #[test]
    fn passthrough_uf_urx_line_follows_format_string() {
        // Shape of the §8.1 user example, with exactly the two trailing fields the format string has.
        let e = LogEntry {
            start_time: Some(UNIX_EPOCH + Duration::from_millis(1_666_124_199_453)),
            response_flags: vec!["UF", "URX"],
            duration_ms: 10000,
            upstream_host: Some("178.170.196.65:9092".parse().unwrap()),
            upstream_cluster: Some("PassthroughCluster".into()),
            downstream_local_address: Some("178.170.196.65:9092".parse().unwrap()),
            downstream_remote_address: Some("10.128.2.32:59026".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(
            e.format_text(),
            "[2022-10-18T20:16:39.453Z] \"- - -\" 0 UF,URX - - \"-\" 0 0 10000 - \"-\" \"-\" \"-\" \"-\" \"178.170.196.65:9092\" PassthroughCluster - 178.170.196.65:9092 10.128.2.32:59026 - -\n"
        );
        let j: serde_json::Value = serde_json::from_str(&e.format_json()).unwrap();
        assert_eq!(j["response_flags"], "UF,URX");
        assert_eq!(j["response_code"], 0);
        assert!(j["method"].is_null());
    }
}
