//! kubectl-style tables and `-o json|yaml` output for `isthmus get` and `up`'s summary.

use serde::Serialize;

use crate::api::PodInfo;
use crate::plan::ServicePlan;

/// kubectl's `HumanDuration` for the AGE column.
pub fn age(secs: u64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        let s = secs % 60;
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        let mm = m % 60;
        if mm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{mm}m")
        }
    } else if h < 48 {
        format!("{h}h")
    } else {
        format!("{d}d")
    }
}

/// Left-aligned columns separated by three spaces, as kubectl prints them.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// `get pods` table; `all` adds NAMESPACE, `wide` adds IP and NETNS.
pub fn pods(pods: &[PodInfo], all: bool, wide: bool) -> String {
    let mut header = vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"];
    if all {
        header.insert(0, "NAMESPACE");
    }
    if wide {
        header.extend(["IP", "NETNS"]);
    }
    let rows: Vec<Vec<String>> = pods
        .iter()
        .map(|p| {
            let mut r = vec![
                p.name.clone(),
                p.ready(),
                p.status.clone(),
                p.restarts().to_string(),
                age(p.age_secs),
            ];
            if all {
                r.insert(0, p.namespace.clone());
            }
            if wide {
                r.extend([p.ip.clone(), p.netns.clone()]);
            }
            r
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    table(&header, &rows)
}

/// `get svc` table.
pub fn services(svcs: &[ServicePlan], all: bool) -> String {
    let mut header = vec!["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"];
    if all {
        header.insert(0, "NAMESPACE");
    }
    let rows: Vec<Vec<String>> = svcs
        .iter()
        .map(|s| {
            let mut r = vec![
                s.name.clone(),
                "ClusterIP".to_string(),
                s.cluster_ip
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "None".into()),
                "<none>".to_string(),
                if s.ports.is_empty() {
                    "<none>".to_string()
                } else {
                    s.ports.join(",")
                },
            ];
            if all {
                r.insert(0, s.namespace.clone());
            }
            r
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    table(&header, &rows)
}

/// Objects (raw manifests) as `NAME` (and NAMESPACE) rows.
pub fn objects(objs: &[serde_json::Value], all: bool) -> String {
    let mut header = vec!["NAME"];
    if all {
        header.insert(0, "NAMESPACE");
    }
    let rows: Vec<Vec<String>> = objs
        .iter()
        .map(|o| {
            let name = o
                .pointer("/metadata/name")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string();
            let ns = o
                .pointer("/metadata/namespace")
                .and_then(|v| v.as_str())
                .unwrap_or("default")
                .to_string();
            if all {
                vec![ns, name]
            } else {
                vec![name]
            }
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    table(&header, &rows)
}

/// A kubectl `List` wrapping `items`, for `-o json|yaml`.
#[derive(Debug, Serialize)]
pub struct List<T: Serialize> {
    /// Always `v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    /// Always `List`.
    pub kind: &'static str,
    /// Items.
    pub items: Vec<T>,
}

/// Serialises `items` as a kubectl List in `format` (`json` or `yaml`).
pub fn list<T: Serialize>(items: Vec<T>, format: &str) -> Result<String, String> {
    let l = List {
        api_version: "v1",
        kind: "List",
        items,
    };
    match format {
        "json" => serde_json::to_string_pretty(&l)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string()),
        "yaml" => serde_saphyr::to_string(&l).map_err(|e| e.to_string()),
        other => Err(format!(
            "unable to match a printer suitable for the output format \"{other}\", allowed formats are: json,yaml,wide"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_like_kubectl() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(119), "119s");
        assert_eq!(age(125), "2m5s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(3 * 3600 + 60), "3h1m");
        assert_eq!(age(10 * 3600), "10h");
        assert_eq!(age(3 * 86400), "3d");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["NAME", "READY"],
            &[
                vec!["a-long-name".into(), "1/1".into()],
                vec!["b".into(), "0/1".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME          READY\na-long-name   1/1\nb             0/1\n"
        );
    }

    #[test]
    fn lists_render_json_and_yaml() {
        let j = list(vec![serde_json::json!({"a": 1})], "json").expect("json");
        assert!(j.contains("\"kind\": \"List\""), "{j}");
        let y = list(vec![serde_json::json!({"a": 1})], "yaml").expect("yaml");
        assert!(y.contains("kind: List"), "{y}");
        assert!(list(Vec::<u8>::new(), "xml").is_err());
    }
}
