//! istioctl-style tables and filters on a compiled config.

mod common;

use isthmus_compile::{render, ConfigKind, Filter, Format};

#[test]
fn short_tables_for_every_kind() {
    let c = common::load_case("double-mtls");
    let gw = &c.proxy("gateway").config;
    let clusters = render(
        gw,
        ConfigKind::Cluster,
        &Filter {
            fqdn: Some("api.partner.example.com".into()),
            ..Default::default()
        },
        Format::Short,
    )
    .unwrap();
    let rows: Vec<Vec<&str>> = clusters
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        vec![
            "SERVICE",
            "FQDN",
            "PORT",
            "SUBSET",
            "DIRECTION",
            "TYPE",
            "DESTINATION",
            "RULE"
        ]
    );
    assert!(
        rows.contains(&vec![
            "api.partner.example.com",
            "443",
            "-",
            "outbound",
            "STRICT_DNS",
            "partner-originate-mtls.istio-system"
        ]),
        "{clusters}"
    );

    let listeners = render(
        gw,
        ConfigKind::Listener,
        &Filter {
            port: Some(8443),
            ..Default::default()
        },
        Format::Short,
    )
    .unwrap();
    assert!(
        listeners.lines().next().unwrap().starts_with("ADDRESSES"),
        "{listeners}"
    );
    assert!(
        listeners.contains("0.0.0.0")
            && listeners.contains("SNI: api.partner.example.com")
            && listeners.contains("Route: https.8443.https-partner.egress-partner.istio-system"),
        "{listeners}"
    );

    let routes = render(gw, ConfigKind::Route, &Filter::default(), Format::Short).unwrap();
    assert!(
        routes.contains("https.8443.https-partner.egress-partner.istio-system")
            && routes.contains("partner-via-egress.istio-system"),
        "{routes}"
    );

    let secrets = render(gw, ConfigKind::Secret, &Filter::default(), Format::Short).unwrap();
    assert!(
        secrets.contains("kubernetes://partner-client-credential")
            && secrets.contains("Cert Chain"),
        "{secrets}"
    );
    assert!(
        secrets.contains("ROOTCA") && secrets.contains("ISSUED AT RUN TIME"),
        "mesh certs come from the CA: {secrets}"
    );

    let sleep = &c.proxy("sleep").config;
    let eps = render(
        sleep,
        ConfigKind::Endpoint,
        &Filter {
            fqdn: Some("istio-egressgateway.istio-system.svc.cluster.local".into()),
            port: Some(443),
            subset: Some(String::new()),
            ..Default::default()
        },
        Format::Short,
    )
    .unwrap();
    let ep_rows: Vec<&str> = eps.lines().skip(1).collect();
    assert_eq!(ep_rows.len(), 1, "{eps}");
    assert!(
        ep_rows[0].contains(":8443")
            && ep_rows[0].contains("HEALTHY")
            && ep_rows[0]
                .ends_with("outbound|443||istio-egressgateway.istio-system.svc.cluster.local"),
        "{eps}"
    );
}

#[test]
fn filters_select_like_istioctl() {
    let c = common::load_case("t91-https-over-mtls");
    let cfg = &c.proxy("client").config;
    let by = |f: Filter| -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_str(&render(cfg, ConfigKind::Cluster, &f, Format::Json).unwrap())
                .unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        by(Filter {
            subset: Some("partner".into()),
            ..Default::default()
        }),
        vec!["outbound|8443|partner|t91-egress.istio-vt-t91.svc.homelab.local"]
    );
    assert_eq!(
        by(Filter {
            port: Some(443),
            ..Default::default()
        }),
        vec!["outbound|443||api.partner.example"]
    );
    assert_eq!(
        by(Filter {
            direction: Some("inbound".into()),
            ..Default::default()
        }),
        Vec::<String>::new()
    );
    assert_eq!(
        by(Filter {
            fqdn: Some("BlackHoleCluster".into()),
            ..Default::default()
        }),
        vec!["BlackHoleCluster"]
    );
    assert!("bogus".parse::<ConfigKind>().is_err());
    assert!("xml".parse::<Format>().is_err());
    let all: serde_json::Value = serde_json::from_str(
        &render(cfg, ConfigKind::All, &Filter::default(), Format::Json).unwrap(),
    )
    .unwrap();
    for k in ["listeners", "routes", "clusters", "endpoints"] {
        assert!(all[k].is_array(), "{k}");
    }
    assert_eq!(
        all["node"]["id"],
        format!(
            "sidecar~{}~client.istio-vt-t91~istio-vt-t91.svc.homelab.local",
            cfg.node.metadata.instance_ips[0]
        )
    );
}
