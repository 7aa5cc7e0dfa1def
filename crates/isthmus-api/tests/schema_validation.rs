//! Structural (CRD schema + CEL) validation: the seeds' exact kubectl texts, kube's ordering
//! rules, and the Istio conformance corpus.

use isthmus_api::schema::{
    kubectl_message, kubectl_strict_error, strict_decoding_message, unknown_fields,
    validate_structure, validate_structure_with, CelBadValue, FieldErrorType, ValidateOptions,
};
use serde_json::{json, Value};
use std::path::PathBuf;

const DR: &str = "networking.istio.io/v1";

fn dr(spec: Value) -> Value {
    json!({"apiVersion": DR, "kind": "DestinationRule", "metadata": {"name": "t91-invalid-mode"}, "spec": spec})
}

fn msg(kind: &str, name: &str, obj: &Value) -> String {
    let v = obj["apiVersion"].as_str().unwrap_or(DR);
    kubectl_message(kind, name, &validate_structure(kind, v, obj))
}

#[test]
fn seed_tls_mode_enum() {
    // The enum violation is a "blocking" error (kube >= 1.28 `hasBlockingErr`): the CEL rules are
    // skipped and a path-less cause says so, hence kubectl's `* ` form (the seed T91 N1 output
    // shows that `* ` prefix).
    let obj = dr(json!({"host": "a.example.com", "trafficPolicy": {"tls": {"mode": "tcp"}}}));
    assert_eq!(
        msg("DestinationRule", "t91-invalid-mode", &obj),
        "The DestinationRule \"t91-invalid-mode\" is invalid: \n\
         * spec.trafficPolicy.tls.mode: Unsupported value: \"tcp\": supported values: \"DISABLE\", \"SIMPLE\", \"MUTUAL\", \"ISTIO_MUTUAL\"\n\
         * <nil>: Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation"
    );
    let errs = validate_structure("DestinationRule", DR, &obj);
    assert_eq!(
        kubectl_message("DestinationRule", "t91-invalid-mode", &errs[..1]),
        r#"The DestinationRule "t91-invalid-mode" is invalid: spec.trafficPolicy.tls.mode: Unsupported value: "tcp": supported values: "DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL""#
    );
}

#[test]
fn seed_duration_given_as_number() {
    let obj = dr(
        json!({"host": "a", "trafficPolicy": {"connectionPool": {"tcp": {"tcpKeepalive": {"time": 300}}}}}),
    );
    let errs = validate_structure("DestinationRule", DR, &obj);
    assert_eq!(
        errs[0].path,
        "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.time"
    );
    assert_eq!(errs[0].error_type, FieldErrorType::TypeInvalid);
    assert_eq!(
        errs[0].error(),
        r#"spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.time: Invalid value: "integer": spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.time in body must be of type string: "integer""#
    );
    // A type error is "blocking": kube skips the CEL rules and says so in a path-less cause.
    assert_eq!(
        msg("DestinationRule", "dr1", &obj),
        "The DestinationRule \"dr1\" is invalid: \n\
         * spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.time: Invalid value: \"integer\": spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.time in body must be of type string: \"integer\"\n\
         * <nil>: Invalid value: \"null\": some validation rules were not checked because the object was invalid; correct the existing errors to complete validation"
    );
}

#[test]
fn required_host() {
    let obj = dr(json!({"trafficPolicy": {}}));
    let errs = validate_structure("DestinationRule", DR, &obj);
    assert_eq!(errs[0].error(), "spec.host: Required value");
    assert!(errs.iter().any(|e| e.path == "<nil>"), "{errs:?}");
}

#[test]
fn cel_duration_rule_and_styles() {
    let obj = dr(
        json!({"host": "a", "trafficPolicy": {"connectionPool": {"tcp": {"connectTimeout": "0s"}}}}),
    );
    assert_eq!(
        msg("DestinationRule", "dr1", &obj),
        r#"The DestinationRule "dr1" is invalid: spec.trafficPolicy.connectionPool.tcp.connectTimeout: Invalid value: "string": must be a valid duration greater than 1ms"#
    );
    let actual = validate_structure_with(
        "DestinationRule",
        DR,
        &obj,
        ValidateOptions {
            cel_bad_value: CelBadValue::ActualValue,
        },
    );
    assert_eq!(
        actual[0].error(),
        r#"spec.trafficPolicy.connectionPool.tcp.connectTimeout: Invalid value: "0s": must be a valid duration greater than 1ms"#
    );
    // Unparsable durations fail at evaluation time with cel-go's conversion error.
    let bad = dr(
        json!({"host": "a", "trafficPolicy": {"connectionPool": {"tcp": {"connectTimeout": "abc"}}}}),
    );
    assert_eq!(
        validate_structure("DestinationRule", DR, &bad)[0].error(),
        "spec.trafficPolicy.connectionPool.tcp.connectTimeout: Invalid value: \"string\": type conversion error from 'string' to 'google.protobuf.Duration' evaluating rule: must be a valid duration greater than 1ms"
    );
    // Fine durations pass; idleTimeout has no rule (0s allowed).
    let ok = dr(
        json!({"host": "a", "trafficPolicy": {"connectionPool": {"tcp": {"connectTimeout": "1ms", "idleTimeout": "0s"}}}}),
    );
    assert_eq!(validate_structure("DestinationRule", DR, &ok), vec![]);
}

#[test]
fn cel_on_objects_and_lists() {
    let se = |spec: Value| json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "ServiceEntry", "metadata": {"name": "s"}, "spec": spec});
    let obj = se(
        json!({"hosts": ["example.com"], "workloadSelector": {}, "endpoints": [{"address": "1.2.3.4"}]}),
    );
    // No resolution means NONE, which also forbids endpoints: both rules fail, in rule order.
    assert_eq!(
        msg("ServiceEntry", "s", &obj),
        "The ServiceEntry \"s\" is invalid: \n\
         * spec: Invalid value: \"object\": only one of WorkloadSelector or Endpoints can be set\n\
         * spec: Invalid value: \"object\": NONE mode cannot set endpoints"
    );
    let actual = validate_structure_with(
        "ServiceEntry",
        "networking.istio.io/v1alpha3",
        &obj,
        ValidateOptions {
            cel_bad_value: CelBadValue::ActualValue,
        },
    );
    assert_eq!(
        actual[0].error(),
        "spec: Invalid value: only one of WorkloadSelector or Endpoints can be set"
    );
    let ports = se(
        json!({"hosts": ["example.com"], "ports": [{"name": "a", "number": 1}, {"name": "b", "number": 1}]}),
    );
    assert_eq!(
        msg("ServiceEntry", "s", &ports),
        r#"The ServiceEntry "s" is invalid: spec.ports: Invalid value: "array": port number cannot be duplicated"#
    );
    let port = se(json!({"hosts": ["example.com"], "ports": [{"name": "a", "number": 99999}]}));
    assert_eq!(
        msg("ServiceEntry", "s", &port),
        r#"The ServiceEntry "s" is invalid: spec.ports[0].number: Invalid value: "integer": port must be between 1-65535"#
    );
    let dup = se(
        json!({"hosts": ["example.com"], "ports": [{"name": "a", "number": 1}, {"name": "a", "number": 12}]}),
    );
    assert_eq!(
        msg("ServiceEntry", "s", &dup),
        r#"The ServiceEntry "s" is invalid: spec.ports[1]: Duplicate value: map[string]interface {}{"name":"a"}"#
    );
}

#[test]
fn several_causes_and_duplicates_dropped() {
    let obj = dr(json!({"host": "a", "trafficPolicy": {
        "tls": {"mode": "tcp"},
        "loadBalancer": {"simple": "FASTEST"}
    }}));
    let m = msg("DestinationRule", "x", &obj);
    assert!(
        m.starts_with("The DestinationRule \"x\" is invalid: \n* "),
        "{m}"
    );
    assert_eq!(m.lines().count(), 4, "{m}");
    assert!(m.contains("* spec.trafficPolicy.tls.mode: Unsupported value: \"tcp\""));
    assert!(m.contains("* spec.trafficPolicy.loadBalancer.simple: Unsupported value: \"FASTEST\": supported values: \"UNSPECIFIED\", \"LEAST_CONN\", \"RANDOM\", \"PASSTHROUGH\", \"ROUND_ROBIN\", \"LEAST_REQUEST\""));
    let errs = validate_structure("DestinationRule", DR, &obj);
    let mut doubled = errs.clone();
    doubled.extend(errs.clone());
    assert_eq!(kubectl_message("DestinationRule", "x", &doubled), m);
}

#[test]
fn enum_with_wrong_type_reports_both() {
    let obj = dr(json!({"host": "a", "trafficPolicy": {"tls": {"mode": 5}}}));
    let errs = validate_structure("DestinationRule", DR, &obj);
    let texts: Vec<String> = errs.iter().map(|e| e.error()).collect();
    assert_eq!(
        texts[0],
        r#"spec.trafficPolicy.tls.mode: Invalid value: "integer": spec.trafficPolicy.tls.mode in body must be of type string: "integer""#
    );
    assert_eq!(
        texts[1],
        r#"spec.trafficPolicy.tls.mode: Unsupported value: 5: supported values: "DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL""#
    );
}

#[test]
fn bounds_one_of_and_sizes() {
    let obj = dr(
        json!({"host": "a", "trafficPolicy": {"loadBalancer": {"warmup": {"duration": "300s", "minimumPercent": 150.0}}}}),
    );
    assert_eq!(
        validate_structure("DestinationRule", DR, &obj)[0].error(),
        "spec.trafficPolicy.loadBalancer.warmup.minimumPercent: Invalid value: 150: spec.trafficPolicy.loadBalancer.warmup.minimumPercent in body should be less than or equal to 100"
    );
    let obj = dr(
        json!({"host": "a", "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "x", "useSourceIp": true}}}}),
    );
    assert_eq!(
        validate_structure("DestinationRule", DR, &obj)[0].error(),
        "<nil>: Invalid value: \"\": \"spec.trafficPolicy.loadBalancer.consistentHash\" must validate one and only one schema (oneOf). Found 2 valid alternatives"
    );
    let vs = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "v"},
        "spec": {"hosts": ["a"], "http": [{"match": [{"uri": {"exact": "/a", "prefix": "/b"}}], "route": [{"destination": {"host": "a"}}]}]}});
    assert_eq!(
        validate_structure("VirtualService", "networking.istio.io/v1", &vs)[0].error(),
        "<nil>: Invalid value: \"\": \"spec.http[0].match[0].uri\" must validate one and only one schema (oneOf). Found 2 valid alternatives"
    );
    let errs = validate_structure("VirtualService", "networking.istio.io/v1", &vs);
    assert_eq!(
        errs[0].subject_path().as_deref(),
        Some("spec.http[0].match[0].uri")
    );
    assert_eq!(
        errs.len(),
        1,
        "a oneOf failure is not blocking: no skipped-CEL notice"
    );
    let blocked = validate_structure("DestinationRule", DR, &dr(json!({"host": 1})));
    assert_eq!(blocked[0].subject_path().as_deref(), Some("spec.host"));
    assert_eq!(
        blocked.last().and_then(|e| e.subject_path()),
        None,
        "the skipped-CEL notice has no subject"
    );
    assert_eq!(
        isthmus_api::schema::api_status_message("VirtualService", "v", &errs[..1]),
        "VirtualService.networking.istio.io \"v\" is invalid: <nil>: Invalid value: \"\": \"spec.http[0].match[0].uri\" must validate one and only one schema (oneOf). Found 2 valid alternatives"
    );
    let long = "a".repeat(300);
    let se = json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "s"},
        "spec": {"hosts": ["example.com"], "ports": [{"name": long, "number": 80}]}});
    assert_eq!(
        validate_structure("ServiceEntry", "networking.istio.io/v1", &se)[0].error(),
        "spec.ports[0].name: Too long: may not be longer than 256"
    );
}

#[test]
fn unknown_fields_and_strict_message() {
    let obj = json!({"apiVersion": DR, "kind": "DestinationRule", "metadata": {"name": "x"},
        "spec": {"host": "a", "trafficPolicy": {"foo": 1, "tls": {"mode": "SIMPLE", "bar": {"z": 1}}},
                 "subsets": [{"name": "v1", "labelz": {}}]},
        "extra": true});
    let unknown = unknown_fields("DestinationRule", DR, &obj);
    assert_eq!(
        unknown,
        vec![
            "extra",
            "spec.subsets[0].labelz",
            "spec.trafficPolicy.foo",
            "spec.trafficPolicy.tls.bar"
        ]
    );
    let one = vec!["spec.trafficPolicy.foo".to_string()];
    assert_eq!(
        strict_decoding_message("DestinationRule", DR, &one),
        r#"DestinationRule in version "v1" cannot be handled as a DestinationRule: strict decoding error: unknown field "spec.trafficPolicy.foo""#
    );
    assert_eq!(
        kubectl_strict_error("dr.yaml", "DestinationRule", "v1", &one),
        r#"Error from server (BadRequest): error when creating "dr.yaml": DestinationRule in version "v1" cannot be handled as a DestinationRule: strict decoding error: unknown field "spec.trafficPolicy.foo""#
    );
    // A map given where a string is declared: its keys are unknown fields (kube prunes them).
    let obj = dr(json!({"host": {"a": 1}}));
    assert_eq!(
        unknown_fields("DestinationRule", DR, &obj),
        vec!["spec.host.a"]
    );
    // Label maps (additionalProperties) accept any key; metadata fields are checked.
    let obj = json!({"apiVersion": DR, "kind": "DestinationRule", "metadata": {"name": "x", "labelz": {}},
        "spec": {"host": "a", "subsets": [{"name": "v1", "labels": {"any": "thing"}}]}});
    assert_eq!(
        unknown_fields("DestinationRule", DR, &obj),
        vec!["metadata.labelz"]
    );
    // Unknown fields are pruned before validation (--validate=ignore semantics).
    let obj = dr(json!({"host": "a", "bogus": 1}));
    assert!(validate_structure("DestinationRule", DR, &obj).is_empty());
}

#[test]
fn nulls_floats_and_status() {
    // null in a non-nullable field is dropped before validation: host becomes missing.
    let obj = dr(json!({"host": null}));
    assert_eq!(
        validate_structure("DestinationRule", DR, &obj)[0].error(),
        "spec.host: Required value"
    );
    // kubectl's YAML→JSON makes 80.0 an integer.
    let se = json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "s"},
        "spec": {"hosts": ["a.com"], "ports": [{"name": "http", "number": 80.0}]}});
    assert!(validate_structure("ServiceEntry", "networking.istio.io/v1", &se).is_empty());
    let se = json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "s"},
        "spec": {"hosts": ["a.com"], "ports": [{"name": "http", "number": 80.5}]}});
    assert_eq!(
        validate_structure("ServiceEntry", "networking.istio.io/v1", &se)[0].error(),
        r#"spec.ports[0].number: Invalid value: "number": spec.ports[0].number in body must be of type integer: "number""#
    );
    // status is wiped on create.
    let obj = json!({"apiVersion": DR, "kind": "DestinationRule", "metadata": {"name": "x"}, "spec": {"host": "a"}, "status": 5});
    assert!(validate_structure("DestinationRule", DR, &obj).is_empty());
    // Missing spec.
    let obj = json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "s"}});
    assert_eq!(
        validate_structure("ServiceEntry", "networking.istio.io/v1", &obj)[0].error(),
        "spec: Required value"
    );
    // Kinds without a schema are not validated here.
    assert!(validate_structure("Service", "v1", &json!({"spec": 1})).is_empty());
    assert!(validate_structure(
        "DestinationRule",
        "networking.istio.io/v2",
        &json!({"spec": 1})
    )
    .is_empty());
}

#[test]
fn object_meta_texts() {
    let obj = json!({"apiVersion": DR, "kind": "DestinationRule",
        "metadata": {"name": "Bad_Name", "labels": {"app": "a b"}}, "spec": {"host": "a"}});
    let errs = validate_structure("DestinationRule", DR, &obj);
    let texts: Vec<String> = errs.iter().map(|e| e.error()).collect();
    assert_eq!(
        texts,
        vec![
            r#"metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"#.to_string(),
            r#"metadata.labels: Invalid value: "a b": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"#.to_string(),
        ]
    );
    let obj =
        json!({"apiVersion": DR, "kind": "DestinationRule", "metadata": {}, "spec": {"host": "a"}});
    assert_eq!(
        validate_structure("DestinationRule", DR, &obj)[0].error(),
        "metadata.name: Required value: name or generateName is required"
    );
    let obj = json!({"apiVersion": DR, "kind": "DestinationRule",
        "metadata": {"generateName": "dr-", "annotations": {"a/b/c": "x"}}, "spec": {"host": "a"}});
    let errs = validate_structure("DestinationRule", DR, &obj);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].error().starts_with(
        r#"metadata.annotations: Invalid value: "a/b/c": a qualified name must consist of"#
    ));
}

#[test]
fn all_versions_served() {
    for kind in [
        "Gateway",
        "VirtualService",
        "DestinationRule",
        "ServiceEntry",
        "Sidecar",
        "WorkloadEntry",
    ] {
        for v in ["v1", "v1beta1", "v1alpha3"] {
            assert!(
                isthmus_api::schema::has_schema(kind, &format!("networking.istio.io/{v}")),
                "{kind} {v}"
            );
        }
    }
}

#[test]
fn gateway_and_workload_entry_rules() {
    let gw = json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "g"},
        "spec": {"servers": [{"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["*"],
                  "tls": {"mode": "SIMPLE", "credentialName": "a", "credentialNames": ["b"]}}]}});
    assert_eq!(
        msg("Gateway", "g", &gw),
        r#"The Gateway "g" is invalid: spec.servers[0].tls: Invalid value: "object": only one of credentialName or credentialNames can be set"#
    );
    let we = json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry", "metadata": {"name": "w"},
        "spec": {"address": "unix://"}});
    assert_eq!(
        msg("WorkloadEntry", "w", &we),
        "The WorkloadEntry \"w\" is invalid: \n\
         * spec.address: Invalid value: \"string\": index out of range: 8 evaluating rule: UDS must be an absolute path or abstract socket\n\
         * spec.address: Invalid value: \"string\": UDS may not be a dir"
    );
    let we = json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry", "metadata": {"name": "w"},
        "spec": {"labels": {"a": "b"}}});
    assert_eq!(
        msg("WorkloadEntry", "w", &we),
        r#"The WorkloadEntry "w" is invalid: spec: Invalid value: "object": Address is required"#
    );
}

// ---------------------------------------------------------------------------------------------
// Corpus

fn corpora_dir() -> Option<PathBuf> {
    isthmus_testutil::corpora_dir(env!("CARGO_MANIFEST_DIR"), "istio-validation")
}

/// (file, index, name, _err, object without _err) for every document of the matching files.
fn corpus_docs(
    dir: &std::path::Path,
    suffix: &str,
) -> Vec<(String, usize, String, Option<String>, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("istio-validation"))
        .expect("read corpus dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(suffix))
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read corpus file");
        let docs = isthmus_api::yaml::parse_stream(&text).expect("parse corpus file");
        for (i, d) in docs.iter().enumerate() {
            let mut v = d.root.to_json();
            if v.is_null() {
                continue;
            }
            let err = v
                .as_object_mut()
                .and_then(|m| m.remove("_err"))
                .and_then(|e| e.as_str().map(String::from));
            let name = v["metadata"]["name"].as_str().unwrap_or("").to_string();
            let file = f
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_string();
            out.push((file, i, name, err, v));
        }
    }
    out
}

fn structural_message(v: &Value) -> Option<String> {
    let kind = v["kind"].as_str()?;
    let api = v["apiVersion"].as_str()?;
    let unknown = unknown_fields(kind, api, v);
    if !unknown.is_empty() {
        return Some(kubectl_strict_error("corpus.yaml", kind, api, &unknown));
    }
    let errs = validate_structure(kind, api, v);
    if errs.is_empty() {
        None
    } else {
        Some(kubectl_message(
            kind,
            v["metadata"]["name"].as_str().unwrap_or(""),
            &errs,
        ))
    }
}

#[test]
fn corpus_valid_documents_pass() {
    let Some(dir) = corpora_dir() else { return };
    let docs = corpus_docs(&dir, "-valid.yaml");
    assert!(
        docs.len() >= 5,
        "expected corpus documents, found {}",
        docs.len()
    );
    for (file, i, name, _, v) in docs {
        assert_eq!(
            structural_message(&v),
            None,
            "{file} doc {i} ({name}) must pass structural validation"
        );
    }
}

/// The invalid corpus documents that the CRD schema alone rejects (the others are rejected by
/// Istio's webhook, i.e. semantic validation). Each must fail with a message containing its
/// `_err`; every other one must pass structurally.
const CAUGHT_STRUCTURALLY: &[&str] = &[
    "destinationrule-invalid.yaml#0 bookinfo-ratings",
    "destinationrule-invalid.yaml#1 bookinfo-ratings",
    "destinationrule-invalid.yaml#2 bookinfo-ratings",
    "serviceentry-invalid.yaml#0 no-spec",
    "serviceentry-invalid.yaml#1 missing-host",
    "serviceentry-invalid.yaml#2 bad-selector-value",
    "serviceentry-invalid.yaml#3 selector-and-endpoints",
    "serviceentry-invalid.yaml#4 bad-host-wildcard",
    "serviceentry-invalid.yaml#5 bad-cidr-resolution",
    "serviceentry-invalid.yaml#6 duplicate-ports-name",
    "serviceentry-invalid.yaml#7 duplicate-ports-number",
    "serviceentry-invalid.yaml#8 bad-port",
    "serviceentry-invalid.yaml#9 bad-port-target",
    "serviceentry-invalid.yaml#10 none-with-endpoints",
    "serviceentry-invalid.yaml#11 dns-rr-with-multiple-endpoints",
];

#[test]
fn corpus_invalid_documents_caught_structurally() {
    let Some(dir) = corpora_dir() else { return };
    let docs = corpus_docs(&dir, "-invalid.yaml");
    let mut caught = Vec::new();
    for (file, i, name, err, v) in &docs {
        let id = format!("{file}#{i} {name}");
        match structural_message(v) {
            Some(m) => {
                let want = err.as_deref().unwrap_or("");
                eprintln!("structural: {id}:\n{m}\n");
                assert!(
                    m.contains(want),
                    "{id}: message {m:?} does not contain _err {want:?}"
                );
                caught.push(id);
            }
            None => eprintln!("not structural (webhook-level): {id} (_err {err:?})"),
        }
    }
    assert_eq!(
        caught, CAUGHT_STRUCTURALLY,
        "set of structurally rejected corpus documents changed"
    );
}
