//! Cases ported from Istio's own webhook tests (istio/istio
//! `pkg/config/validation/validation_test.go`: TestValidateGateway, TestValidateServer,
//! TestValidateTlsOptions, TestValidateRouteDestination, TestValidateVirtualService,
//! TestValidateWorkloadEntry). Each case runs the webhook checks alone — as upstream calls the
//! validate functions directly, without the CRD schema — and compares the verdict (valid /
//! warning) and, where upstream checks it, a substring of the error.

use isthmus_api::validation::{join_errors, validate_object};
use isthmus_api::{Body, Kind, Object, ObjectMeta, Source};

struct Case {
    name: &'static str,
    kind: &'static str,
    spec: &'static str,
    valid: bool,
    warning: Option<bool>,
    error_contains: &'static str,
}

fn object(kind: &str, spec: &str) -> Object {
    let yaml = format!("apiVersion: networking.istio.io/v1\nkind: {kind}\nmetadata: {{name: foo, namespace: bar}}\nspec:\n{spec}");
    let docs = isthmus_api::yaml::parse_stream(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
    let json = docs[0].root.to_json();
    let k = Kind::from_api("networking.istio.io/v1", kind).expect("modelled kind");
    Object {
        api_version: "networking.istio.io/v1".into(),
        kind: k,
        meta: ObjectMeta {
            name: "foo".into(),
            namespace: Some("bar".into()),
            ..Default::default()
        },
        body: Body::decode(k, &json).unwrap_or_else(|e| panic!("{yaml}: {e:?}")),
        source: Source::default(),
        raw: json,
        seq: 0,
    }
}

const fn case(
    name: &'static str,
    kind: &'static str,
    spec: &'static str,
    valid: bool,
    warning: Option<bool>,
) -> Case {
    Case {
        name,
        kind,
        spec,
        valid,
        warning,
        error_contains: "",
    }
}

const fn err(
    name: &'static str,
    kind: &'static str,
    spec: &'static str,
    error_contains: &'static str,
) -> Case {
    Case {
        name,
        kind,
        spec,
        valid: false,
        warning: None,
        error_contains,
    }
}

fn cases() -> Vec<Case> {
    let gw = "Gateway";
    let vs = "VirtualService";
    let we = "WorkloadEntry";
    let se = "ServiceEntry";
    let dr = "DestinationRule";
    let sc = "Sidecar";
    vec![
        // TestValidateGateway
        err("gateway empty", gw, "  {}\n", "server"),
        case("happy domain", gw, "  servers:\n  - hosts: [foo.bar.com]\n    port: {name: name1, number: 7, protocol: http}\n", true, Some(false)),
        err("invalid port", gw, "  servers:\n  - hosts: [foo.bar.com]\n    port: {name: name1, number: 66000, protocol: http}\n", "port"),
        err(
            "duplicate port names",
            gw,
            "  servers:\n  - hosts: [foo.bar.com]\n    port: {name: foo, number: 80, protocol: http}\n  - hosts: [scooby.doo.com]\n    port: {name: foo, number: 8080, protocol: http}\n",
            "port names",
        ),
        err("invalid domain", gw, "  servers:\n  - hosts: [foo.*.bar.com]\n    port: {number: 7, protocol: http}\n", "domain"),
        case(
            "valid httpsRedirect",
            gw,
            "  servers:\n  - hosts: [bar.com]\n    port: {name: http, number: 80, protocol: http}\n    tls: {httpsRedirect: true}\n",
            true,
            Some(false),
        ),
        case(
            "invalid https httpsRedirect",
            gw,
            "  servers:\n  - hosts: [bar.com]\n    port: {name: https, number: 80, protocol: https}\n    tls: {httpsRedirect: true}\n",
            true,
            Some(true),
        ),
        err(
            "invalid partial wildcard",
            gw,
            "  servers:\n  - hosts: ['*bar.com']\n    port: {name: tls, number: 443, protocol: tls}\n    tls: {mode: ISTIO_MUTUAL}\n",
            "partial wildcard \"*bar.com\" not allowed",
        ),
        err("k8s gateway-api ~ host outside gateway semantics", gw, "  servers:\n  - hosts: ['~/foo.bar.com']\n    port: {name: name1, number: 7, protocol: http}\n", "invalid namespace value"),
        // TestValidateServer (as single-server Gateways)
        case("server happy ip", gw, "  servers:\n  - hosts: [1.1.1.1]\n    port: {number: 7, name: http, protocol: http}\n", true, None),
        case("server happy ns/name", gw, "  servers:\n  - hosts: [ns1/foo.bar.com]\n    port: {number: 7, name: http, protocol: http}\n", true, None),
        case("server happy */name", gw, "  servers:\n  - hosts: ['*/foo.bar.com']\n    port: {number: 7, name: http, protocol: http}\n", true, None),
        case("server happy ./name", gw, "  servers:\n  - hosts: [./foo.bar.com]\n    port: {number: 7, name: http, protocol: http}\n", true, None),
        err("server invalid domain ns/name", gw, "  servers:\n  - hosts: [ns1/foo.*.bar.com]\n    port: {number: 7, name: http, protocol: http}\n", "domain"),
        err("server short name", gw, "  servers:\n  - hosts: [foo]\n    port: {number: 7, name: http, protocol: http}\n", "short names"),
        err("server invalid tls options", gw, "  servers:\n  - hosts: [foo.bar.com]\n    port: {number: 1, name: http, protocol: http}\n    tls: {mode: SIMPLE}\n", "TLS"),
        err("server no tls on HTTPS", gw, "  servers:\n  - hosts: [foo.bar.com]\n    port: {number: 10000, name: https, protocol: https}\n", "must have TLS"),
        err(
            "server tls on HTTP",
            gw,
            "  servers:\n  - hosts: [foo.bar.com]\n    port: {number: 10000, name: http, protocol: http}\n    tls: {mode: SIMPLE}\n",
            "cannot have TLS",
        ),
        case("server bind ip", gw, "  servers:\n  - hosts: [foo.bar.com]\n    port: {number: 7, name: http, protocol: http}\n    bind: 127.0.0.1\n", true, None),
        err(
            "server bind unix path with invalid port",
            gw,
            "  servers:\n  - hosts: [foo.bar.com]\n    port: {number: 7, name: http, protocol: http}\n    bind: 'unix://@foobar'\n",
            "port number must be 0 for unix domain socket",
        ),
        case("server bind unix path", gw, "  servers:\n  - hosts: [foo.bar.com]\n    port: {number: 0, name: http, protocol: http}\n    bind: 'unix://@foobar'\n", true, None),
        err("server bind bad ip", gw, "  servers:\n  - hosts: [foo.bar.com]\n    port: {number: 0, name: http, protocol: http}\n    bind: foo.bar\n", "foo.bar is not a valid IP"),
        err("server port invalid protocol", gw, "  servers:\n  - hosts: [foo.bar.com]\n    port: {number: 1, name: Henry, protocol: kafka}\n", "invalid protocol"),
        // TestValidateTlsOptions (HTTPS servers)
        case(
            "tls simple",
            gw,
            "  servers:\n  - hosts: [a.com]\n    port: {number: 443, name: https, protocol: HTTPS}\n    tls: {mode: SIMPLE, serverCertificate: a, privateKey: b}\n",
            true,
            None,
        ),
        case("tls simple sds", gw, "  servers:\n  - hosts: [a.com]\n    port: {number: 443, name: https, protocol: HTTPS}\n    tls: {mode: SIMPLE, credentialName: sds-name}\n", true, None),
        err(
            "tls simple sds with server cert",
            gw,
            "  servers:\n  - hosts: [a.com]\n    port: {number: 443, name: https, protocol: HTTPS}\n    tls: {mode: SIMPLE, serverCertificate: a, privateKey: b, credentialName: sds-name}\n",
            "one of credential_name, credential_names",
        ),
        err("tls simple no server cert", gw, "  servers:\n  - hosts: [a.com]\n    port: {number: 443, name: https, protocol: HTTPS}\n    tls: {mode: SIMPLE, privateKey: b}\n", "server certificate"),
        err("tls simple no private key", gw, "  servers:\n  - hosts: [a.com]\n    port: {number: 443, name: https, protocol: HTTPS}\n    tls: {mode: SIMPLE, serverCertificate: a}\n", "private key"),
        case(
            "tls simple more than 2 certs",
            gw,
            "  servers:\n  - hosts: [a.com]\n    port: {number: 443, name: https, protocol: HTTPS}\n    tls:\n      mode: SIMPLE\n      tlsCertificates: [{serverCertificate: a, privateKey: b}, {serverCertificate: c, privateKey: d}, {serverCertificate: e, privateKey: f}]\n",
            true,
            Some(true),
        ),
        err(
            "tls simple 2 certs with missing certificate",
            gw,
            "  servers:\n  - hosts: [a.com]\n    port: {number: 443, name: https, protocol: HTTPS}\n    tls:\n      mode: SIMPLE\n      tlsCertificates: [{privateKey: b}, {serverCertificate: c, privateKey: d}]\n",
            "server certificate",
        ),
        case(
            "tls simple sds no server cert",
            gw,
            "  servers:\n  - hosts: [a.com]\n    port: {number: 443, name: https, protocol: HTTPS}\n    tls: {mode: SIMPLE, privateKey: b, credentialName: sds-name}\n",
            true,
            None,
        ),
        // TestValidateRouteDestination (as tcp routes)
        case("route simple", vs, "  hosts: [foo.bar]\n  tcp:\n  - route: [{destination: {host: foo.baz}}]\n", true, None),
        case("route wildcard dash", vs, "  hosts: [foo.bar]\n  tcp:\n  - route: [{destination: {host: '*-foo.baz'}}]\n", true, None),
        case("route wildcard prefix", vs, "  hosts: [foo.bar]\n  tcp:\n  - route: [{destination: {host: '*foo.baz'}}]\n", true, None),
        err("route wildcard", vs, "  hosts: [foo.bar]\n  tcp:\n  - route: [{destination: {host: '*'}}]\n", "invalid destination host *"),
        case("route bad wildcard", vs, "  hosts: [foo.bar]\n  tcp:\n  - route: [{destination: {host: 'foo.*'}}]\n", false, None),
        case("route bad fqdn", vs, "  hosts: [foo.bar]\n  tcp:\n  - route: [{destination: {host: default/baz}}]\n", false, None),
        case(
            "route weighted",
            vs,
            "  hosts: [foo.bar]\n  tcp:\n  - route: [{destination: {host: foo.baz.south}, weight: 25}, {destination: {host: foo.baz.east}, weight: 75}]\n",
            true,
            None,
        ),
        err(
            "route weight < 0",
            vs,
            "  hosts: [foo.bar]\n  tcp:\n  - route: [{destination: {host: foo.baz.south}, weight: 5}, {destination: {host: foo.baz.east}, weight: -1}]\n",
            "weight -1 < 0",
        ),
        case(
            "route total weight > 100",
            vs,
            "  hosts: [foo.bar]\n  tcp:\n  - route: [{destination: {host: foo.baz.south}, weight: 550}, {destination: {host: foo.baz.east}, weight: 500}]\n",
            true,
            None,
        ),
        case("route weight = 0", vs, "  hosts: [foo.bar]\n  tcp:\n  - route: [{destination: {host: foo.baz.south}, weight: 0}]\n", true, None),
        err(
            "route total weight = 0 with multi RouteDestination",
            vs,
            "  hosts: [foo.bar]\n  tcp:\n  - route: [{destination: {host: foo.baz.south}, weight: 0}, {destination: {host: foo.baz.east}, weight: 0}]\n",
            "total destination weight = 0",
        ),
        // TestValidateHTTPRoute / TestValidateHTTPRedirect / TestValidateHTTPDirectResponse (one-rule VirtualServices)
        case("http empty rule", vs, "  hosts: [foo.bar]\n  http:\n  - {}\n", false, None),
        case("http simple redirect", vs, "  hosts: [foo.bar]\n  http:\n  - redirect: {uri: /lerp, authority: foo.biz}\n", true, None),
        err("http conflicting redirect and route", vs, "  hosts: [foo.bar]\n  http:\n  - redirect: {uri: /lerp, authority: foo.biz}\n    route: [{destination: {host: foo.baz}}]\n", "HTTP route cannot contain both route and redirect"),
        case("http valid headers", vs, "  hosts: [foo.bar]\n  http:\n  - route:\n    - destination: {host: foo.baz}\n      headers:\n        request: {add: {name: ''}, set: {name: ''}, remove: [name]}\n        response: {add: {name: ''}, set: {name: ''}, remove: [name]}\n", true, None),
        err("http empty header name request add", vs, "  hosts: [foo.bar]\n  http:\n  - route:\n    - destination: {host: foo.baz}\n      headers: {request: {add: {'': value}}}\n", "header name cannot be empty"),
        case("http empty header name request remove", vs, "  hosts: [foo.bar]\n  http:\n  - route:\n    - destination: {host: foo.baz}\n      headers: {request: {remove: ['']}}\n", false, None),
        case("http empty header name response set", vs, "  hosts: [foo.bar]\n  http:\n  - route:\n    - destination: {host: foo.baz}\n      headers: {response: {set: {'': value}}}\n", false, None),
        case("http envoy escaped % set", vs, "  hosts: [foo.bar]\n  http:\n  - route:\n    - destination: {host: foo.baz}\n      headers: {response: {set: {i-love-istio: '100%%'}}}\n", true, None),
        case("http envoy variable set", vs, "  hosts: [foo.bar]\n  http:\n  - route:\n    - destination: {host: foo.baz}\n      headers: {response: {set: {name: '%HOSTNAME%'}}}\n", true, None),
        err("http envoy unescaped % set", vs, "  hosts: [foo.bar]\n  http:\n  - route:\n    - destination: {host: foo.baz}\n      headers: {response: {set: {name: 'abcd%oijasodifj'}}}\n", "Un-terminated variable expression"),
        case("http envoy variable add", vs, "  hosts: [foo.bar]\n  http:\n  - route:\n    - destination: {host: foo.baz}\n      headers: {response: {add: {name: 'hello %HOSTNAME%'}}}\n", true, None),
        err("http empty prefix header match", vs, "  hosts: [foo.bar]\n  http:\n  - route: [{destination: {host: foo.bar}}]\n    match: [{headers: {emptyprefix: {prefix: ''}}}]\n", "\"headers\": prefix string match should not be empty"),
        case("http invalid mirror percent", vs, "  hosts: [foo.bar]\n  http:\n  - mirrorPercent: 101\n    route: [{destination: {host: foo.bar}}]\n", false, None),
        err("http invalid mirror percentage", vs, "  hosts: [foo.bar]\n  http:\n  - mirrorPercentage: {value: 101}\n    route: [{destination: {host: foo.bar}}]\n", "mirror_percentage must have a max value of 100 (it has 101.000000)"),
        case("http valid mirror percentage", vs, "  hosts: [foo.bar]\n  http:\n  - mirrorPercentage: {value: 1}\n    route: [{destination: {host: foo.bar}}]\n", true, None),
        case("http negative mirror percentage", vs, "  hosts: [foo.bar]\n  http:\n  - mirrorPercentage: {value: -1}\n    route: [{destination: {host: foo.bar}}]\n", false, None),
        err("http mirrors without destination", vs, "  hosts: [foo.bar]\n  http:\n  - mirrors: [{}]\n    route: [{destination: {host: foo.bar}}]\n", "destination is required for mirrors"),
        case("http mirrors invalid percentage", vs, "  hosts: [foo.bar]\n  http:\n  - mirrors: [{destination: {host: foo.baz}}, {destination: {host: foo.baz}, percentage: {value: 101}}]\n    route: [{destination: {host: foo.bar}}]\n", false, None),
        case("http mirrors valid percentage", vs, "  hosts: [foo.bar]\n  http:\n  - mirrors: [{destination: {host: foo.baz}, percentage: {value: 1}}, {destination: {host: foo.baz}, percentage: {value: 50}}]\n    route: [{destination: {host: foo.bar}}]\n", true, None),
        err("http mirror and mirrors", vs, "  hosts: [foo.bar]\n  http:\n  - mirror: {host: foo.baz}\n    mirrors: [{destination: {host: foo.bar}}]\n    route: [{destination: {host: foo.baz}}]\n", "HTTP route cannot contain both mirror and mirrors"),
        case("redirect bad code", vs, "  hosts: [foo.bar]\n  http:\n  - redirect: {uri: t, authority: t, redirectCode: 400}\n", false, None),
        case("redirect empty authority", vs, "  hosts: [foo.bar]\n  http:\n  - redirect: {uri: t}\n", true, None),
        case("redirect empty uri", vs, "  hosts: [foo.bar]\n  http:\n  - redirect: {authority: t}\n", true, None),
        case("redirect normal", vs, "  hosts: [foo.bar]\n  http:\n  - redirect: {uri: t, authority: t, redirectCode: 308}\n", true, None),
        case("direct response 200", vs, "  hosts: [foo.bar]\n  http:\n  - directResponse: {status: 200}\n", true, None),
        err("direct response 199", vs, "  hosts: [foo.bar]\n  http:\n  - directResponse: {status: 199}\n", "HTTP status 199 is not in range 200-599"),
        case("direct response 601", vs, "  hosts: [foo.bar]\n  http:\n  - directResponse: {status: 601}\n", false, None),
        case("direct response string body", vs, "  hosts: [foo.bar]\n  http:\n  - directResponse: {status: 200, body: {string: hello}}\n", true, Some(false)),
        case("destination unnumbered port selector", vs, "  hosts: [foo.bar]\n  http:\n  - route: [{destination: {host: foo.bar, subset: shiny, port: {}}}]\n", false, None),
        case("destination full", vs, "  hosts: [foo.bar]\n  http:\n  - route: [{destination: {host: foo.bar, subset: shiny, port: {number: 5000}}}]\n", true, None),
        // TestValidateVirtualService
        case("vs simple", vs, concat!("  hosts: [foo.bar]\n", "  http:\n  - route:\n    - destination: {host: foo.baz}\n"), true, Some(false)),
        case(
            "vs allow sni based domains",
            vs,
            "  hosts: [outbound_.15010_._.istiod.istio-system.svc.cluster.local]\n  gateways: [ns1/gateway]\n  tls:\n  - match: [{sniHosts: [outbound_.15010_._.istiod.istio-system.svc.cluster.local]}]\n    route: [{destination: {host: istio.istio-system.svc.cluster.local}}]\n",
            true,
            None,
        ),
        case("vs duplicate hosts", vs, concat!("  hosts: ['*.foo.bar', '*.bar']\n", "  http:\n  - route:\n    - destination: {host: foo.baz}\n"), false, None),
        case("vs destination without host", vs, "  hosts: [foo.bar]\n  http:\n  - route:\n    - destination: {}\n", false, None),
        case("vs delegate with no hosts", vs, "  http:\n  - route:\n    - destination: {host: foo.baz}\n", true, None),
        case("vs bad host", vs, concat!("  hosts: [foo.ba!r]\n", "  http:\n  - route:\n    - destination: {host: foo.baz}\n"), false, None),
        err("vs no tcp or http routing", vs, "  hosts: [foo.bar]\n", "http, tcp or tls must be provided in virtual service"),
        case("vs bad gateway", vs, concat!("  hosts: [foo.bar]\n  gateways: [b@dgateway]\n", "  http:\n  - route:\n    - destination: {host: foo.baz}\n"), false, None),
        case(
            "vs FQDN for gateway",
            vs,
            concat!("  hosts: [foo.bar]\n  gateways: [gateway.example.com]\n", "  http:\n  - route:\n    - destination: {host: foo.baz}\n"),
            true,
            Some(true),
        ),
        case("vs namespace/name for gateway", vs, concat!("  hosts: [foo.bar]\n  gateways: [ns1/gateway]\n", "  http:\n  - route:\n    - destination: {host: foo.baz}\n"), true, Some(false)),
        case("vs namespace/* for gateway", vs, concat!("  hosts: [foo.bar]\n  gateways: ['ns1/*']\n", "  http:\n  - route:\n    - destination: {host: foo.baz}\n"), false, None),
        case("vs */name for gateway", vs, concat!("  hosts: [foo.bar]\n  gateways: ['*/gateway']\n", "  http:\n  - route:\n    - destination: {host: foo.baz}\n"), false, None),
        case("vs wildcard for mesh gateway", vs, concat!("  hosts: ['*']\n", "  http:\n  - route:\n    - destination: {host: foo.baz}\n"), false, None),
        case("vs wildcard for non-mesh gateway", vs, concat!("  hosts: ['*']\n  gateways: [somegateway]\n", "  http:\n  - route:\n    - destination: {host: foo.baz}\n"), true, None),
        case("vs missing tcp route", vs, "  hosts: [foo.bar]\n  tcp:\n  - match: [{port: 999}]\n", false, None),
        case("vs missing tls route", vs, "  hosts: [foo.bar]\n  tls:\n  - match: [{port: 999, sniHosts: [foo.bar]}]\n", false, None),
        case(
            "vs deprecated mirror",
            vs,
            concat!("  hosts: [foo.bar]\n  gateways: [ns1/gateway]\n", "  http:\n  - mirrorPercent: 5\n    route:\n    - destination: {host: foo.baz}\n"),
            true,
            Some(true),
        ),
        case(
            "vs set authority",
            vs,
            "  hosts: [foo.bar]\n  http:\n  - headers: {request: {set: {':authority': foo}}}\n    route:\n    - destination: {host: foo.baz}\n",
            true,
            Some(false),
        ),
        case(
            "vs set authority in destination",
            vs,
            "  hosts: [foo.bar]\n  http:\n  - route:\n    - destination: {host: foo.baz}\n      headers: {request: {set: {':authority': foo}}}\n",
            true,
            Some(false),
        ),
        case(
            "vs set authority in rewrite and header",
            vs,
            "  hosts: [foo.bar]\n  http:\n  - headers: {request: {set: {':authority': foo}}}\n    rewrite: {authority: bar}\n    route:\n    - destination: {host: foo.baz}\n",
            false,
            None,
        ),
        case(
            "vs non-method-get",
            vs,
            "  hosts: [foo.bar]\n  http:\n  - route:\n    - destination: {host: foo.baz}\n    match:\n    - uri: {prefix: /api/v1/product}\n    - uri: {prefix: /api/v1/products}\n      method: {exact: GET}\n",
            true,
            Some(true),
        ),
        case(
            "vs uri-with-prefix-exact",
            vs,
            "  hosts: [foo.bar]\n  http:\n  - route:\n    - destination: {host: foo.baz}\n    match:\n    - uri: {prefix: /}\n    - uri: {exact: /}\n      method: {exact: GET}\n",
            true,
            Some(false),
        ),
        case(
            "vs jwt claim route without gateway",
            vs,
            "  hosts: [foo.bar]\n  gateways: [mesh]\n  http:\n  - route:\n    - destination: {host: foo.baz}\n    match:\n    - uri: {prefix: /}\n      headers: {'@request.auth.claims.foo': {exact: bar}}\n",
            false,
            None,
        ),
        case(
            "vs ip address as sni host",
            vs,
            "  hosts: [foo.bar]\n  tls:\n  - route: [{destination: {host: foo.baz}}]\n    match: [{port: 999, sniHosts: [1.1.1.1]}]\n",
            true,
            Some(true),
        ),
        case(
            "vs invalid wildcard as sni host",
            vs,
            "  hosts: [foo.bar]\n  tls:\n  - route: [{destination: {host: foo.baz}}]\n    match: [{port: 999, sniHosts: [foo.*.com]}]\n",
            false,
            None,
        ),
        // TestValidateWorkloadEntry
        case("we valid", we, "  address: 1.2.3.4\n", true, None),
        case("we missing address", we, "  {}\n", false, None),
        case("we missing address with network", we, "  network: network-2\n", true, Some(true)),
        case("we valid unix endpoint", we, "  address: unix:///lon/google/com\n", true, None),
        case("we invalid unix endpoint", we, "  address: unix:///lon/google/com\n  ports: {'7777': 7777}\n", false, None),
        case("we valid FQDN", we, "  address: validdns.com\n  ports: {'7777': 7777}\n", true, None),
        case("we invalid FQDN", we, "  address: invaliddns.com:9443\n  ports: {'7777': 7777}\n", false, None),
        case("we valid IP", we, "  address: 172.16.1.1\n  ports: {'7777': 7777}\n", true, None),
        // TestValidateServiceEntries
        case("se discovery type DNS", se, "  hosts: ['*.google.com']\n  ports: [{number: 80, protocol: http, name: http-valid1}, {number: 8080, protocol: http, name: http-valid2}]\n  endpoints: [{address: lon.google.com, ports: {http-valid1: 8080}}, {address: in.google.com, ports: {http-valid2: 9080}}]\n  resolution: DNS\n", true, Some(false)),
        case("se DNS round robin", se, "  hosts: ['*.istio.io']\n  ports: [{number: 80, protocol: http, name: http-valid1}, {number: 8080, protocol: http, name: http-valid2}]\n  endpoints: [{address: api-v1.istio.io, ports: {http-valid1: 8080}}]\n  resolution: DNS_ROUND_ROBIN\n", true, Some(false)),
        case("se DNS one host with IP and https", se, "  hosts: [httpbin.org]\n  addresses: [10.10.10.10]\n  ports: [{number: 80, protocol: http, name: http-valid1}, {number: 8080, protocol: http, name: http-valid2}, {number: 443, protocol: https, name: https}]\n  resolution: DNS\n", true, Some(false)),
        case("se DNS multi hosts with IP and https", se, "  hosts: [httpbin.org, wikipedia.org]\n  addresses: [10.10.10.10]\n  ports: [{number: 80, protocol: http, name: http-valid1}, {number: 8080, protocol: http, name: http-valid2}, {number: 443, protocol: https, name: https}]\n  resolution: DNS\n", true, Some(true)),
        case("se DNS IP in endpoints", se, "  hosts: ['*.google.com']\n  ports: [{number: 80, protocol: http, name: http-valid1}, {number: 8080, protocol: http, name: http-valid2}]\n  endpoints: [{address: 1.1.1.1, ports: {http-valid1: 8080}}, {address: in.google.com, ports: {http-valid2: 9080}}]\n  resolution: DNS\n", true, Some(false)),
        case("se empty hosts", se, "  ports: [{number: 80, protocol: http, name: http-valid1}]\n  endpoints: [{address: in.google.com, ports: {http-valid2: 9080}}]\n  resolution: DNS\n", false, None),
        case("se bad hosts", se, "  hosts: ['-']\n  ports: [{number: 80, protocol: http, name: http-valid1}]\n  endpoints: [{address: in.google.com, ports: {http-valid2: 9080}}]\n  resolution: DNS\n", false, None),
        case("se full wildcard host", se, "  hosts: [foo.com, '*']\n  ports: [{number: 80, protocol: http, name: http-valid1}]\n  endpoints: [{address: in.google.com, ports: {http-valid2: 9080}}]\n  resolution: DNS\n", false, None),
        case("se short name host", se, "  hosts: [foo, bar.com]\n  ports: [{number: 80, protocol: http, name: http-valid1}]\n  endpoints: [{address: in.google.com, ports: {http-valid1: 9080}}]\n  resolution: DNS\n", true, Some(false)),
        case("se undefined endpoint port", se, "  hosts: [google.com]\n  ports: [{number: 80, protocol: http, name: http-valid1}, {number: 80, protocol: http, name: http-valid2}]\n  endpoints: [{address: lon.google.com, ports: {http-valid1: 8080}}, {address: in.google.com, ports: {http-dne: 9080}}]\n  resolution: DNS\n", false, None),
        case("se DNS non-FQDN endpoint", se, "  hosts: ['*.google.com']\n  ports: [{number: 80, protocol: http, name: http-valid1}, {number: 8080, protocol: http, name: http-valid2}]\n  endpoints: [{address: '*.lon.google.com', ports: {http-valid1: 8080}}, {address: in.google.com, ports: {http-dne: 9080}}]\n  resolution: DNS\n", false, None),
        case("se DNS non-FQDN host", se, "  hosts: ['*.google.com']\n  ports: [{number: 80, protocol: http, name: http-valid1}, {number: 8080, protocol: http, name: http-valid2}]\n  resolution: DNS\n", false, None),
        case("se DNS no endpoints", se, "  hosts: [google.com]\n  ports: [{number: 80, protocol: http, name: http-valid1}, {number: 8080, protocol: http, name: http-valid2}]\n  resolution: DNS\n", true, Some(false)),
        case("se DNS unix endpoint", se, "  hosts: ['*.google.com']\n  ports: [{number: 80, protocol: http, name: http-valid1}]\n  endpoints: [{address: 'unix:///lon/google/com'}]\n  resolution: DNS\n", false, None),
        case("se none", se, "  hosts: [google.com]\n  ports: [{number: 80, protocol: http, name: http-valid1}, {number: 8080, protocol: http, name: http-valid2}]\n  resolution: NONE\n", true, Some(false)),
        case("se none with endpoints", se, "  hosts: [google.com]\n  ports: [{number: 80, protocol: http, name: http-valid1}, {number: 8080, protocol: http, name: http-valid2}]\n  endpoints: [{address: lon.google.com, ports: {http-valid1: 8080}}]\n  resolution: NONE\n", false, None),
        case("se none cidr", se, "  hosts: [google.com]\n  addresses: [172.1.2.16/16]\n  ports: [{number: 80, protocol: http, name: http-valid1}, {number: 8080, protocol: http, name: http-valid2}]\n  resolution: NONE\n", true, Some(false)),
        case("se static cidr with endpoints", se, "  hosts: [google.com]\n  addresses: [172.1.2.16/16]\n  ports: [{number: 80, protocol: http, name: http-valid1}, {number: 8080, protocol: http, name: http-valid2}]\n  endpoints: [{address: 1.1.1.1, ports: {http-valid1: 8080}}, {address: 2.2.2.2, ports: {http-valid2: 9080}}]\n  resolution: STATIC\n", true, Some(false)),
        case("se static FQDN in endpoints", se, "  hosts: [google.com]\n  addresses: [172.1.2.16]\n  ports: [{number: 80, protocol: http, name: http-valid1}, {number: 8080, protocol: http, name: http-valid2}]\n  endpoints: [{address: google.com, ports: {http-valid1: 8080}}, {address: 2.2.2.2, ports: {http-valid2: 9080}}]\n  resolution: STATIC\n", false, None),
        case("se static missing endpoints", se, "  hosts: [google.com]\n  addresses: [172.1.2.16]\n  ports: [{number: 80, protocol: http, name: http-valid1}, {number: 8080, protocol: http, name: http-valid2}]\n  resolution: STATIC\n", true, Some(false)),
        case("se static bad endpoint port name", se, "  hosts: [google.com]\n  addresses: [172.1.2.16]\n  ports: [{number: 80, protocol: http, name: http-valid1}, {number: 8080, protocol: http, name: http-valid2}]\n  endpoints: [{address: 1.1.1.1, ports: {http-valid1: 8080}}, {address: 2.2.2.2, ports: {http-dne: 9080}}]\n  resolution: STATIC\n", false, None),
        case("se none conflicting port names", se, "  hosts: [google.com]\n  ports: [{number: 80, protocol: http, name: http-conflict}, {number: 8080, protocol: http, name: http-conflict}]\n  resolution: NONE\n", false, None),
        case("se none conflicting port numbers", se, "  hosts: [google.com]\n  ports: [{number: 80, protocol: http, name: http-conflict1}, {number: 80, protocol: http, name: http-conflict2}]\n  resolution: NONE\n", false, None),
        case("se unix socket", se, "  hosts: [uds.cluster.local]\n  ports: [{number: 6553, protocol: grpc, name: grpc-service1}]\n  resolution: STATIC\n  endpoints: [{address: 'unix:///path/to/socket'}]\n", true, Some(false)),
        case("se unix socket relative path", se, "  hosts: [uds.cluster.local]\n  ports: [{number: 6553, protocol: grpc, name: grpc-service1}]\n  resolution: STATIC\n  endpoints: [{address: 'unix://./relative/path.sock'}]\n", false, None),
        case("se unix socket endpoint ports", se, "  hosts: [uds.cluster.local]\n  ports: [{number: 6553, protocol: grpc, name: grpc-service1}]\n  resolution: STATIC\n  endpoints: [{address: 'unix:///path/to/socket', ports: {grpc-service1: 6553}}]\n", false, None),
        case("se unix socket multiple service ports", se, "  hosts: [uds.cluster.local]\n  ports: [{number: 6553, protocol: grpc, name: grpc-service1}, {number: 80, protocol: http, name: http-service2}]\n  resolution: STATIC\n  endpoints: [{address: 'unix:///path/to/socket'}]\n", false, None),
        case("se empty protocol", se, "  hosts: [google.com]\n  addresses: [172.1.2.16/16]\n  ports: [{number: 80, protocol: http, name: http-valid1}, {number: 8080, name: http-valid2}]\n  resolution: NONE\n", true, Some(false)),
        case("se selector", se, "  hosts: [google.com]\n  workloadSelector: {labels: {foo: bar}}\n  ports: [{number: 80, protocol: http, name: http-valid1}]\n", true, Some(true)),
        case("se selector without labels", se, "  hosts: [google.com]\n  ports: [{number: 80, protocol: http, name: http-valid1}, {number: 8080, protocol: http, name: http-valid2}]\n  workloadSelector: {}\n", true, Some(true)),
        case("se selector and endpoints", se, "  hosts: [google.com]\n  workloadSelector: {labels: {foo: bar}}\n  ports: [{number: 80, protocol: http, name: http-valid1}]\n  endpoints: [{address: 1.1.1.1}]\n", false, Some(true)),
        case("se selector and NONE", se, "  hosts: [google.com]\n  workloadSelector: {labels: {foo: bar}}\n  ports: [{number: 80, protocol: http, name: http-valid1}]\n  resolution: NONE\n", true, Some(true)),
        case("se selector and DNS", se, "  hosts: [google.com]\n  workloadSelector: {labels: {foo: bar}}\n  ports: [{number: 80, protocol: http, name: http-valid1}]\n  resolution: DNS\n", true, Some(false)),
        case("se bad selector key", se, "  hosts: [google.com]\n  workloadSelector: {labels: {'': bar}}\n  ports: [{number: 80, protocol: http, name: http-valid1}]\n", false, None),
        case("se repeat target port", se, "  hosts: [google.com]\n  resolution: DNS\n  ports: [{number: 80, protocol: http, name: http-valid1, targetPort: 80}, {number: 81, protocol: http, name: http-valid2, targetPort: 80}]\n", true, Some(false)),
        case("se invalid target port", se, "  hosts: [google.com]\n  resolution: DNS\n  ports: [{number: 80, protocol: http, name: http-valid1, targetPort: 65536}]\n", false, None),
        case("se warn target port", se, "  hosts: [google.com]\n  workloadSelector: {labels: {key: bar}}\n  ports: [{number: 80, protocol: http, name: http-valid1, targetPort: 1234}]\n", true, Some(true)),
        case("se valid endpoint port", se, "  hosts: [google.com]\n  ports: [{number: 80, protocol: http, name: http-valid1, targetPort: 81}]\n  resolution: STATIC\n  endpoints: [{address: 1.1.1.1, ports: {http-valid1: 8081}}]\n", true, Some(false)),
        case("se invalid endpoint port", se, "  hosts: [google.com]\n  ports: [{number: 80, protocol: http, name: http-valid1, targetPort: 81}]\n  resolution: STATIC\n  endpoints: [{address: 1.1.1.1, ports: {http-valid1: 65536}}]\n", false, None),
        case("se protocol unset for addresses empty", se, "  hosts: [google.com]\n  addresses: []\n  ports: [{number: 80, protocol: http, name: http-valid1}, {number: 8080, name: http-valid2}]\n  resolution: NONE\n", true, Some(true)),
        case("se protocol TCP for addresses empty", se, "  hosts: [google.com]\n  addresses: []\n  ports: [{number: 80, protocol: http, name: http-valid1}, {number: 81, protocol: TCP, name: tcp-valid1}]\n  resolution: NONE\n", true, Some(true)),
        case("se DNS_ROUND_ROBIN more than one endpoint", se, "  hosts: [google.com]\n  ports: [{number: 8081, protocol: http, name: http-valid1}]\n  endpoints: [{address: api-v1.istio.io, ports: {http-valid1: 8081}}, {address: 1.1.1.2, ports: {http-valid1: 8081}}]\n  resolution: DNS_ROUND_ROBIN\n", false, Some(false)),
        case("se DNS_ROUND_ROBIN 0 endpoints", se, "  hosts: [google.com]\n  ports: [{number: 8081, protocol: http, name: http-valid1}]\n  endpoints: []\n  resolution: DNS_ROUND_ROBIN\n", true, Some(false)),
        case("se partial wildcard hosts", se, "  hosts: ['*.nytimes.com', '*washingtonpost.com']\n  ports: [{number: 443, protocol: HTTPS, name: https-nytimes}]\n  resolution: NONE\n", true, Some(true)),
        case("se network set with no address", se, "  hosts: [www.example.com]\n  ports: [{number: 443, protocol: HTTPS, name: https-example}]\n  endpoints: [{network: cluster-1}]\n  resolution: STATIC\n", true, Some(true)),
        // TestValidateSidecar
        case("sc ALLOW_ANY without egress proxy", sc, "  outboundTrafficPolicy: {mode: ALLOW_ANY}\n  egress: [{hosts: ['*/*']}]\n", true, Some(false)),
        case("sc egress proxy with REGISTRY_ONLY", sc, "  outboundTrafficPolicy:\n    egressProxy: {host: foo.bar, subset: shiny, port: {number: 5000}}\n  egress: [{hosts: ['*/*']}]\n", false, None),
        case("sc egress proxy with ALLOW_ANY", sc, "  outboundTrafficPolicy:\n    mode: ALLOW_ANY\n    egressProxy: {host: foo.bar, subset: shiny, port: {number: 5000}}\n  egress: [{hosts: ['*/*']}]\n", true, Some(false)),
        case("sc egress proxy invalid fqdn", sc, "  outboundTrafficPolicy:\n    mode: ALLOW_ANY\n    egressProxy: {host: 'foobar*123', subset: shiny, port: {number: 5000}}\n  egress: [{hosts: ['*/*']}]\n", false, None),
        case("sc egress proxy without port", sc, "  outboundTrafficPolicy:\n    mode: ALLOW_ANY\n    egressProxy: {host: foo.bar, subset: shiny}\n  egress: [{hosts: ['*/*']}]\n", false, None),
        case("sc egress only one wildcarded", sc, "  egress: [{hosts: ['*/*', test/a.com]}]\n", true, Some(true)),
        case("sc egress wildcarded ns", sc, "  egress: [{hosts: ['*/b.com', test/a.com]}]\n", true, Some(false)),
        case("sc egress duplicated with wildcard same ns", sc, "  egress: [{hosts: ['test/*', test/a.com]}]\n", true, Some(true)),
        case("sc invalid partial wildcard", sc, "  egress: [{hosts: ['test/*a.com']}]\n", false, None),
        case("sc egress duplicated with wildcard same ns .", sc, "  egress: [{hosts: ['./*', bar/a.com]}]\n", true, Some(true)),
        case("sc ingress tls ISTIO_MUTUAL", sc, "  ingress:\n  - port: {protocol: http, number: 90, name: foo}\n    defaultEndpoint: 127.0.0.1:9999\n    tls: {mode: ISTIO_MUTUAL}\n", false, None),
        case("sc ingress tls AUTO_PASSTHROUGH ipv6", sc, "  ingress:\n  - port: {protocol: http, number: 90, name: foo}\n    defaultEndpoint: '[::1]:9999'\n    tls: {mode: AUTO_PASSTHROUGH}\n", false, None),
        case("sc ingress tls invalid protocol", sc, "  ingress:\n  - port: {protocol: tcp, number: 90, name: foo}\n    defaultEndpoint: 127.0.0.1:9999\n    tls: {mode: SIMPLE}\n", false, None),
        case("sc ingress tls httpsRedirect", sc, "  ingress:\n  - port: {protocol: tcp, number: 90, name: foo}\n    defaultEndpoint: '[::1]:9999'\n    tls: {mode: SIMPLE, httpsRedirect: true}\n", false, None),
        case("sc ingress tls SANs", sc, "  ingress:\n  - port: {protocol: tcp, number: 90, name: foo}\n    defaultEndpoint: 127.0.0.1:9999\n    tls: {mode: SIMPLE, subjectAltNames: [httpbin.com]}\n", false, None),
        case("sc ingress tls credentialName", sc, "  ingress:\n  - port: {protocol: tcp, number: 90, name: foo}\n    defaultEndpoint: 127.0.0.1:9999\n    tls: {mode: SIMPLE, credentialName: secret-name}\n", false, None),
        case("sc ingress tls credentialNames", sc, "  ingress:\n  - port: {protocol: tcp, number: 90, name: foo}\n    defaultEndpoint: '[::1]:9999'\n    tls: {mode: SIMPLE, credentialNames: [secret-name]}\n", false, None),
        case("sc ingress tls tlsCertificates", sc, "  ingress:\n  - port: {protocol: tcp, number: 90, name: foo}\n    defaultEndpoint: 127.0.0.1:9999\n    tls:\n      mode: SIMPLE\n      tlsCertificates: [{serverCertificate: /a.crt, privateKey: /a.key}, {serverCertificate: /b.crt, privateKey: /b.key}]\n", false, None),
        case("sc valid inbound connection pool", sc, "  inboundConnectionPool:\n    http: {http1MaxPendingRequests: 1024, http2MaxRequests: 1024, maxRequestsPerConnection: 1024, maxRetries: 1024}\n", true, Some(false)),
        case("sc port-level pool with top-level default", sc, "  ingress:\n  - port: {protocol: http, number: 90, name: foo}\n    connectionPool: {http: {http1MaxPendingRequests: 1024}}\n  inboundConnectionPool: {http: {http2MaxRequests: 1024}}\n", true, Some(false)),
        case("sc warn http pool on tcp port", sc, "  ingress:\n  - port: {protocol: tcp, number: 90, name: foo}\n    connectionPool: {http: {http1MaxPendingRequests: 1024}}\n", true, Some(true)),
        case("sc invalid top level pool", sc, "  inboundConnectionPool: {}\n", false, None),
        case("sc invalid port-level pool", sc, "  ingress:\n  - port: {protocol: tcp, number: 90, name: foo}\n    connectionPool: {}\n", false, None),
        err("sc empty", sc, "  {}\n", "sidecar: empty configuration provided"),
        // TestValidateDestinationRule (TLS / InsecureSkipVerify) and TestValidateTrafficPolicy
        case("dr full policy with subsets", dr, "  host: reviews\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n    connectionPool: {tcp: {maxConnections: 7}, http: {http2MaxRequests: 11}}\n    outlierDetection: {minHealthPercent: 20}\n  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy:\n      loadBalancer: {simple: ROUND_ROBIN}\n      connectionPool: {tcp: {maxConnections: 7}, http: {http2MaxRequests: 11}}\n      outlierDetection: {minHealthPercent: 30}\n  - {name: v2, labels: {version: v2}}\n", true, Some(false)),
        case("dr simple ca by caCertificates", dr, "  host: reviews\n  trafficPolicy:\n    tls: {mode: SIMPLE, caCertificates: test, subjectAltNames: [reviews.default.svc]}\n", true, None),
        case("dr simple ca by credentialName", dr, "  host: reviews\n  trafficPolicy:\n    tls: {mode: SIMPLE, credentialName: test, subjectAltNames: [reviews.default.svc]}\n", true, None),
        case("dr simple insecureSkipVerify false", dr, "  host: reviews\n  trafficPolicy:\n    tls: {mode: SIMPLE, caCertificates: test, subjectAltNames: [reviews.default.svc], insecureSkipVerify: false}\n", true, None),
        case("dr simple insecureSkipVerify with credentialName", dr, "  host: reviews\n  trafficPolicy:\n    tls: {mode: SIMPLE, credentialName: test, insecureSkipVerify: true}\n", false, None),
        case("dr simple insecureSkipVerify with caCertificates", dr, "  host: reviews\n  trafficPolicy:\n    tls: {mode: SIMPLE, caCertificates: test, insecureSkipVerify: true}\n", false, None),
        case("dr simple insecureSkipVerify with SANs", dr, "  host: reviews\n  trafficPolicy:\n    tls: {mode: SIMPLE, subjectAltNames: [reviews.default.svc], insecureSkipVerify: true}\n", false, None),
        case("dr mutual with files", dr, "  host: reviews\n  trafficPolicy:\n    tls: {mode: MUTUAL, caCertificates: test, privateKey: key, clientCertificate: cert, subjectAltNames: [reviews.default.svc]}\n", true, None),
        case("dr mutual credentialName", dr, "  host: reviews\n  trafficPolicy:\n    tls: {mode: MUTUAL, credentialName: test, subjectAltNames: [reviews.default.svc]}\n", true, None),
        case("dr mutual insecureSkipVerify with caCertificates", dr, "  host: reviews\n  trafficPolicy:\n    tls: {mode: MUTUAL, caCertificates: test, privateKey: key, clientCertificate: cert, insecureSkipVerify: true}\n", false, None),
        case("dr mutual insecureSkipVerify with credentialName", dr, "  host: reviews\n  trafficPolicy:\n    tls: {mode: MUTUAL, credentialName: test, insecureSkipVerify: true}\n", true, None),
        case("dr mutual insecureSkipVerify without ca", dr, "  host: reviews\n  trafficPolicy:\n    tls: {mode: MUTUAL, privateKey: key, clientCertificate: cert, insecureSkipVerify: true}\n", true, None),
        case("dr mutual insecureSkipVerify with SANs", dr, "  host: reviews\n  trafficPolicy:\n    tls: {mode: MUTUAL, privateKey: key, clientCertificate: cert, subjectAltNames: [reviews.default.svc], insecureSkipVerify: true}\n", false, None),
        case("dr traffic policy nil entries", dr, "  host: reviews\n  trafficPolicy: {}\n", false, None),
        case("dr port level settings without port", dr, "  host: reviews\n  trafficPolicy:\n    portLevelSettings:\n    - loadBalancer: {simple: ROUND_ROBIN}\n      connectionPool: {tcp: {maxConnections: 7}}\n", false, None),
        case("dr bad connection pool", dr, "  host: reviews\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n    connectionPool: {}\n", false, None),
        case("dr bad max connection duration", dr, "  host: reviews\n  trafficPolicy:\n    connectionPool: {tcp: {maxConnectionDuration: 500ns}}\n", false, None),
        case("dr upgrade and use client protocol", dr, "  host: reviews\n  trafficPolicy:\n    connectionPool: {http: {h2UpgradePolicy: UPGRADE, useClientProtocol: true}}\n", false, None),
        case("dr pool tcp and http", dr, "  host: reviews\n  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: 7, connectTimeout: 2s}\n      http: {http1MaxPendingRequests: 2, http2MaxRequests: 11, maxRequestsPerConnection: 5, maxRetries: 4, idleTimeout: 30s, maxConcurrentStreams: 5}\n", true, Some(false)),
        case("dr pool bad connect timeout", dr, "  host: reviews\n  trafficPolicy:\n    connectionPool: {tcp: {connectTimeout: 2.000000005s}}\n", false, None),
        // TestValidateOutlierDetection / TestValidateConnectionPool (as DestinationRules)
        case("dr valid outlier detection", dr, "  host: a\n  trafficPolicy:\n    outlierDetection: {interval: 2s, baseEjectionTime: 2s, maxEjectionPercent: 50}\n", true, Some(false)),
        case("dr outlier bad interval", dr, "  host: a\n  trafficPolicy:\n    outlierDetection: {interval: 2.000000005s}\n", false, None),
        case("dr outlier bad base ejection time", dr, "  host: a\n  trafficPolicy:\n    outlierDetection: {baseEjectionTime: 2.000000005s}\n", false, None),
        case("dr outlier bad max ejection percent", dr, "  host: a\n  trafficPolicy:\n    outlierDetection: {maxEjectionPercent: 105}\n", false, None),
        case("dr outlier panic threshold too low", dr, "  host: a\n  trafficPolicy:\n    outlierDetection: {minHealthPercent: -1}\n", false, None),
        case("dr outlier panic threshold too high", dr, "  host: a\n  trafficPolicy:\n    outlierDetection: {minHealthPercent: 101}\n", false, None),
        case("dr outlier deprecated consecutiveErrors", dr, "  host: a\n  trafficPolicy:\n    outlierDetection: {consecutiveErrors: 101}\n", true, Some(true)),
        case("dr outlier local origin without split", dr, "  host: a\n  trafficPolicy:\n    outlierDetection: {consecutiveLocalOriginFailures: 10}\n", false, None),
        case("dr pool bad max retries", dr, "  host: a\n  trafficPolicy:\n    connectionPool: {http: {maxRetries: -1}}\n", false, None),
        case("dr pool bad idle timeout", dr, "  host: a\n  trafficPolicy:\n    connectionPool: {http: {idleTimeout: 30.000000005s}}\n", false, None),
        case("dr pool tcp idle timeout disabled", dr, "  host: a\n  trafficPolicy:\n    connectionPool: {tcp: {idleTimeout: 0s}}\n", true, None),
        case("dr pool bad max concurrent streams", dr, "  host: a\n  trafficPolicy:\n    connectionPool: {http: {maxConcurrentStreams: -1}}\n", false, None),
        case("dr lb simple", dr, "  host: a\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n", true, None),
        case("dr lb consistent hash cookie", dr, "  host: a\n  trafficPolicy:\n    loadBalancer: {consistentHash: {minimumRingSize: 1024, httpCookie: {name: test, ttl: 3600s}}}\n", true, Some(true)),
        case("dr lb consistent hash cookie missing name", dr, "  host: a\n  trafficPolicy:\n    loadBalancer: {consistentHash: {minimumRingSize: 1024, httpCookie: {ttl: 3600s}}}\n", false, None),
        case("dr lb maglev not prime", dr, "  host: a\n  trafficPolicy:\n    loadBalancer: {consistentHash: {maglev: {tableSize: 1000}}}\n", false, None),
    ]
}

#[test]
fn istio_webhook_cases() {
    let mut failures = Vec::new();
    let all = cases();
    for c in &all {
        let report = validate_object(&object(c.kind, c.spec));
        let valid = report.errors.is_empty();
        let joined = join_errors(&report.errors);
        if valid != c.valid {
            failures.push(format!(
                "{}: valid={valid}, want {} ({joined})",
                c.name, c.valid
            ));
            continue;
        }
        if let Some(w) = c.warning {
            let warned = !report.warnings.is_empty();
            if w != warned {
                failures.push(format!(
                    "{}: warning={}, want {w} ({:?})",
                    c.name,
                    !report.warnings.is_empty(),
                    report.warnings
                ));
            }
        }
        if !c.error_contains.is_empty() && !joined.contains(c.error_contains) {
            failures.push(format!(
                "{}: error {joined:?} does not contain {:?}",
                c.name, c.error_contains
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} Istio webhook cases differ:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}
