//! Namespace end-to-end tests of the local runtime. They need root, `ip`, `nft` and
//! util-linux; without them they print a loud SKIPPED line, and FAIL when `CI=true`.
//! Every test uses its own mesh name so they run in parallel; all traffic stays inside the
//! namespaces they create or on loopback.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use isthmus_local::{capture, dns, net, netns, process, relay, vip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn available(test: &str) -> bool {
    isthmus_local::testing::namespaces_available(test)
}

/// A new mesh named `name`, after removing leftovers of an earlier crashed run of the test.
fn fresh_mesh(name: &str) -> net::MeshNet {
    for n in net::list_netns(&format!("{}-{name}-", net::DEFAULT_PREFIX)) {
        net::delete_netns(&n).expect("delete leftover");
    }
    net::MeshNet::up(net::MeshNetConfig::new(name)).expect("mesh up")
}

fn host_links() -> BTreeSet<String> {
    isthmus_local::cmd::ip(&["-o", "link", "show"])
        .expect("ip link")
        .lines()
        .filter_map(|l| {
            l.split(':')
                .nth(1)
                .map(|s| s.trim().split('@').next().unwrap_or("").to_string())
        })
        .collect()
}

/// Asserts nothing of mesh `name` is left: no namespaces, no new host links or nft tables.
fn assert_gone(name: &str, links_before: &BTreeSet<String>, tables_before: &[String]) {
    let left = net::list_netns(&format!("{}-{name}-", net::DEFAULT_PREFIX));
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let links_after = host_links();
    let new: Vec<_> = links_after.difference(links_before).collect();
    assert!(new.is_empty(), "host links added: {new:?}");
    let tables_after = capture::list_tables(None).expect("nft list tables");
    let new_tables: Vec<_> = tables_after
        .iter()
        .filter(|t| t.contains("isthmus") && !tables_before.contains(t))
        .collect();
    assert!(
        new_tables.is_empty(),
        "host nft tables added: {new_tables:?}"
    );
}

/// A TCP server inside `ns` answering every connection with `name\n` and closing.
async fn name_server(
    ns: &str,
    addr: SocketAddr,
    name: &'static str,
) -> tokio::task::JoinHandle<()> {
    let l = netns::listen_tcp_async(ns, addr)
        .await
        .expect("listen in netns");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = s.write_all(format!("{name}\n").as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    })
}

async fn read_name(ns: &str, addr: SocketAddr, mark: Option<u32>) -> std::io::Result<String> {
    let mut s = netns::connect_tcp(ns, addr, mark)
        .await
        .map_err(std::io::Error::other)?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .map_err(std::io::Error::other)??;
    Ok(out.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_connect_across_bridge_and_down_removes_everything() {
    if !available("pods_connect_across_bridge_and_down_removes_everything") {
        return;
    }
    let links_before = host_links();
    let tables_before = capture::list_tables(None).expect("nft");
    let mesh = fresh_mesh("tconn");
    // The bridge's MAC is pinned (assign type 3, "set"), so pods joining cannot change it
    // under peers that already resolved it.
    let assign = std::process::Command::new("ip")
        .args(["netns", "exec", mesh.node_netns(), "cat"])
        .arg(format!("/sys/class/net/{}/addr_assign_type", net::BRIDGE))
        .output()
        .expect("read addr_assign_type");
    assert_eq!(
        String::from_utf8_lossy(&assign.stdout).trim(),
        "3",
        "{assign:?}"
    );
    let a = mesh.add_pod("default/client").expect("pod a");
    let b = mesh.add_pod("default/server").expect("pod b");
    assert_ne!(a.ip, b.ip);
    assert!(mesh.subnet().contains(&a.ip) && mesh.subnet().contains(&b.ip));
    assert!(matches!(
        mesh.add_pod("default/client"),
        Err(net::NetError::PodExists(_))
    ));
    // A second mesh with the same name is refused with a clear error.
    let again = net::MeshNet::up(net::MeshNetConfig::new("tconn"));
    assert!(
        matches!(again, Err(net::NetError::MeshExists { .. })),
        "{again:?}"
    );

    // Loopback is up in the pod.
    let lo = isthmus_local::cmd::ip(&["-n", &a.netns, "-o", "link", "show", "lo"]).expect("lo");
    assert!(lo.contains("UP"), "{lo}");

    let l = netns::listen_tcp_async(&b.netns, (b.ip, 7000).into())
        .await
        .expect("listen");
    let accept = tokio::spawn(async move {
        let (mut s, peer) = l.accept().await.expect("accept");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.expect("read");
        s.write_all(b"pong").await.expect("write");
        (peer, buf)
    });
    let mut c = netns::connect_tcp(&a.netns, (b.ip, 7000).into(), None)
        .await
        .expect("connect across bridge");
    c.write_all(b"ping").await.expect("write");
    let mut reply = [0u8; 4];
    c.read_exact(&mut reply).await.expect("read");
    assert_eq!(&reply, b"pong");
    let (peer, got) = accept.await.expect("join");
    assert_eq!(&got, b"ping");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(a.ip),
        "peer address is the client pod's"
    );

    // The host cannot see the pod network: no route to it from the host namespace.
    let host_routes =
        isthmus_local::cmd::ip(&["route", "get", &b.ip.to_string()]).unwrap_or_default();
    assert!(!host_routes.contains(net::BRIDGE), "{host_routes}");

    mesh.remove_pod("default/client").expect("remove pod");
    assert!(!netns::exists(&a.netns));
    let veths =
        isthmus_local::cmd::ip(&["-n", mesh.node_netns(), "-o", "link", "show"]).expect("links");
    assert!(
        !veths.contains(&a.veth),
        "veth of removed pod still in node namespace: {veths}"
    );
    mesh.down().expect("down");
    mesh.down().expect("down is idempotent");
    assert_gone("tconn", &links_before, &tables_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_redirects_outbound_and_inbound_and_marked_traffic_bypasses() {
    if !available("capture_redirects_outbound_and_inbound_and_marked_traffic_bypasses") {
        return;
    }
    let mesh = fresh_mesh("tcap");
    let app = mesh.add_pod("default/app").expect("pod");
    let other = mesh.add_pod("default/other").expect("pod");
    capture::install_capture(&app.netns, &capture::CaptureConfig::default()).expect("install");
    // Installing again replaces atomically instead of duplicating.
    capture::install_capture(&app.netns, &capture::CaptureConfig::default()).expect("reinstall");
    let tables = capture::list_tables(Some(&app.netns)).expect("tables");
    assert_eq!(tables, vec![format!("ip {}", capture::CAPTURE_TABLE)]);

    // "Proxy" listeners inside the app pod.
    let outbound = netns::listen_tcp_async(&app.netns, "0.0.0.0:15001".parse().unwrap())
        .await
        .expect("15001");
    let inbound = netns::listen_tcp_async(&app.netns, "0.0.0.0:15006".parse().unwrap())
        .await
        .expect("15006");
    let _admin = name_server(&app.netns, "0.0.0.0:15020".parse().unwrap(), "admin-direct").await;
    let _local = name_server(
        &app.netns,
        "127.0.0.1:7070".parse().unwrap(),
        "loopback-direct",
    )
    .await;
    let _real = name_server(&other.netns, (other.ip, 8080).into(), "other-direct").await;

    // Outbound from the app lands on 15001 with the original destination.
    let target: SocketAddr = (other.ip, 8080).into();
    let client = tokio::spawn({
        let ns = app.netns.clone();
        async move { netns::connect_tcp(&ns, target, None).await }
    });
    let (accepted, _) = tokio::time::timeout(Duration::from_secs(5), outbound.accept())
        .await
        .expect("timely")
        .expect("accept");
    let od = capture::original_dst(&accepted).expect("SO_ORIGINAL_DST");
    assert_eq!(od, SocketAddrV4::new(other.ip, 8080));
    client.await.expect("join").expect("client connected");

    // Inbound to the app lands on 15006 with the original destination.
    let target: SocketAddr = (app.ip, 9090).into();
    let client = tokio::spawn({
        let ns = other.netns.clone();
        async move { netns::connect_tcp(&ns, target, None).await }
    });
    let (accepted, peer) = tokio::time::timeout(Duration::from_secs(5), inbound.accept())
        .await
        .expect("timely")
        .expect("accept");
    assert_eq!(
        capture::original_dst(&accepted).expect("orig dst"),
        SocketAddrV4::new(app.ip, 9090)
    );
    assert_eq!(peer.ip(), std::net::IpAddr::V4(other.ip));
    client.await.expect("join").expect("client connected");

    // The proxy's own (marked) traffic reaches the real destination.
    assert_eq!(
        read_name(
            &app.netns,
            (other.ip, 8080).into(),
            Some(capture::PROXY_MARK)
        )
        .await
        .expect("marked"),
        "other-direct"
    );
    // A socket marked with set_mark after creation works the same way.
    {
        let ns = app.netns.clone();
        let std = netns::run_in_async(&ns, || {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            capture::set_mark(&s, capture::PROXY_MARK)?;
            s.set_nonblocking(true)?;
            Ok(std::net::TcpStream::from(s))
        })
        .await
        .expect("socket in netns");
        let mut s = tokio::net::TcpSocket::from_std_stream(std)
            .connect((other.ip, 8080).into())
            .await
            .expect("connect");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        assert_eq!(out.trim(), "other-direct");
    }
    // Admin port and loopback are not captured.
    assert_eq!(
        read_name(&other.netns, (app.ip, 15020).into(), None)
            .await
            .expect("admin"),
        "admin-direct"
    );
    assert_eq!(
        read_name(&app.netns, "127.0.0.1:7070".parse().unwrap(), None)
            .await
            .expect("lo"),
        "loopback-direct"
    );
    // Without capture, the same unmarked connection goes direct.
    capture::remove_capture(&app.netns).expect("remove");
    assert!(capture::list_tables(Some(&app.netns))
        .expect("tables")
        .is_empty());
    assert_eq!(
        read_name(&app.netns, (other.ip, 8080).into(), None)
            .await
            .expect("direct"),
        "other-direct"
    );
    mesh.down().expect("down");
    assert!(net::list_netns("isth-tcap-").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_vips_balance_in_pod_and_node_namespaces() {
    if !available("service_vips_balance_in_pod_and_node_namespaces") {
        return;
    }
    let mesh = fresh_mesh("tvip");
    let client = mesh.add_pod("default/client").expect("pod");
    let b = mesh.add_pod("default/b").expect("pod");
    let c = mesh.add_pod("default/c").expect("pod");
    let _sb = name_server(&b.netns, (b.ip, 8080).into(), "b").await;
    let _sc = name_server(&c.netns, (c.ip, 8080).into(), "c").await;
    let vip_bc = Ipv4Addr::new(10, 96, 0, 10);
    let services = vec![
        vip::ServiceVip {
            vip: vip_bc,
            port: 80,
            protocol: vip::L4::Tcp,
            endpoints: vec![SocketAddrV4::new(b.ip, 8080), SocketAddrV4::new(c.ip, 8080)],
        },
        vip::ServiceVip {
            vip: Ipv4Addr::new(10, 96, 0, 11),
            port: 80,
            protocol: vip::L4::Tcp,
            endpoints: vec![],
        },
    ];
    vip::install_service_vips(&client.netns, &services, vip::VipMode::Pod).expect("pod VIPs");
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        seen.insert(
            read_name(&client.netns, (vip_bc, 80).into(), None)
                .await
                .expect("via VIP"),
        );
    }
    assert_eq!(
        seen,
        BTreeSet::from(["b".to_string(), "c".to_string()]),
        "both endpoints used"
    );
    let refused = read_name(
        &client.netns,
        (Ipv4Addr::new(10, 96, 0, 11), 80).into(),
        None,
    )
    .await;
    assert!(
        refused.is_err(),
        "service without endpoints must refuse: {refused:?}"
    );
    // Update: only c remains.
    let services = vec![vip::ServiceVip {
        vip: vip_bc,
        port: 80,
        protocol: vip::L4::Tcp,
        endpoints: vec![SocketAddrV4::new(c.ip, 8080)],
    }];
    vip::install_service_vips(&client.netns, &services, vip::VipMode::Pod).expect("update");
    for _ in 0..5 {
        assert_eq!(
            read_name(&client.netns, (vip_bc, 80).into(), None)
                .await
                .expect("via VIP"),
            "c"
        );
    }
    vip::remove_service_vips(&client.netns).expect("remove");

    // Node mode: rules in the node namespace serve every pod, including hairpin (b -> its own service).
    let vip_b = Ipv4Addr::new(10, 96, 0, 20);
    let services = vec![vip::ServiceVip {
        vip: vip_b,
        port: 80,
        protocol: vip::L4::Tcp,
        endpoints: vec![SocketAddrV4::new(b.ip, 8080)],
    }];
    vip::install_service_vips(mesh.node_netns(), &services, vip::VipMode::Node).expect("node VIPs");
    assert_eq!(
        read_name(&client.netns, (vip_b, 80).into(), None)
            .await
            .expect("client via node VIP"),
        "b"
    );
    assert_eq!(
        read_name(&b.netns, (vip_b, 80).into(), None)
            .await
            .expect("hairpin via node VIP"),
        "b"
    );
    mesh.down().expect("down");
    assert!(net::list_netns("isth-tvip-").is_empty());
}

async fn udp_query(ns: &str, server: SocketAddr, name: &str) -> (dns::Rcode, Vec<Ipv4Addr>) {
    let sock = netns::bind_udp_async(ns, "0.0.0.0:0".parse().unwrap())
        .await
        .expect("udp");
    let q = dns::build_query(0x4242, name, 1);
    sock.send_to(&q, server).await.expect("send");
    let mut buf = vec![0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("timely")
        .expect("recv");
    let (id, rcode, ips) = dns::parse_response(&buf[..n]).expect("parse");
    assert_eq!(id, 0x4242);
    (rcode, ips)
}

/// Whether `pid` is a live process (zombies waiting to be reaped count as dead).
fn alive(pid: i32) -> bool {
    for _ in 0..50 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return false,
            Ok(s) => {
                let state = s
                    .rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next())
                    .unwrap_or("");
                if state == "Z" || state == "X" {
                    return false;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Waits (up to 20 s) until the container's status satisfies `pred`.
async fn wait_status(
    c: &process::Supervised,
    pred: impl Fn(&process::ContainerStatus) -> bool,
) -> process::ContainerStatus {
    let mut w = c.watch();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            {
                let s = w.borrow_and_update();
                if pred(&s) {
                    return s.clone();
                }
            }
            if w.changed().await.is_err() {
                return w.borrow().clone();
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("status not reached in time: {:?}", c.status()))
}

fn spec(name: &str, argv: &[&str]) -> process::ContainerSpec {
    process::ContainerSpec {
        name: name.to_string(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        working_dir: None,
        mounts: vec![],
    }
}

fn sandbox(
    mesh: &net::MeshNet,
    pod: &net::PodNet,
    dir: &std::path::Path,
    hostname: &str,
    volumes: Vec<process::Volume>,
) -> Arc<process::PodSandbox> {
    let resolv = dns::resolv_conf(
        mesh.dns_ip(),
        &dns::search_domains("default", "cluster.local"),
        5,
    );
    let hosts = process::hosts_file(pod.ip, hostname, &[]);
    Arc::new(
        process::PodSandbox::prepare(&pod.netns, dir, hostname, &resolv, &hosts, volumes)
            .expect("sandbox"),
    )
}

fn capture_exec(
    pod: &process::PodSandbox,
    pid: Option<u32>,
    s: &process::ContainerSpec,
    argv: &[&str],
) -> (i32, String) {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let out = pod
        .exec_command(pid, s, &argv)
        .expect("exec command")
        .output()
        .expect("run");
    (
        process::exit_code(out.status),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_mesh_names_forwards_outside_names_and_nxdomain_otherwise() {
    if !available("dns_answers_mesh_names_forwards_outside_names_and_nxdomain_otherwise") {
        return;
    }
    let mesh = fresh_mesh("tdns");
    let pod = mesh.add_pod("default/sleep").expect("pod");
    let outside = dns::DnsTable::from_entries([(
        "api.partner.example".to_string(),
        vec![Ipv4Addr::new(10, 244, 0, 77)],
    )]);
    let _outside_srv = dns::DnsServer::bind(
        Some(mesh.node_netns()),
        (mesh.outside_dns_ip(), 53).into(),
        outside.clone(),
        None,
    )
    .await
    .expect("outside dns");
    let se = vip::allocate_vips(["api.mesh.example"]);
    let mesh_table = dns::DnsTable::new();
    mesh_table.insert(
        "httpbin.default.svc.cluster.local",
        vec![Ipv4Addr::new(10, 96, 0, 10)],
    );
    for (h, ip) in &se {
        mesh_table.insert(h, vec![*ip]);
    }
    let fwd = dns::Forward::Udp {
        addr: (mesh.outside_dns_ip(), 53).into(),
        netns: Some(mesh.node_netns().to_string()),
    };
    let _mesh_srv = dns::DnsServer::bind(
        Some(mesh.node_netns()),
        (mesh.dns_ip(), 53).into(),
        mesh_table.clone(),
        Some(fwd),
    )
    .await
    .expect("mesh dns");

    let server: SocketAddr = (mesh.dns_ip(), 53).into();
    assert_eq!(
        udp_query(&pod.netns, server, "httpbin.default.svc.cluster.local").await,
        (dns::Rcode::NoError, vec![Ipv4Addr::new(10, 96, 0, 10)])
    );
    assert_eq!(
        udp_query(&pod.netns, server, "api.mesh.example").await,
        (dns::Rcode::NoError, vec![Ipv4Addr::new(240, 240, 0, 1)])
    );
    assert_eq!(
        udp_query(&pod.netns, server, "api.partner.example").await,
        (dns::Rcode::NoError, vec![Ipv4Addr::new(10, 244, 0, 77)])
    );
    assert_eq!(
        udp_query(&pod.netns, server, "www.google.com").await.0,
        dns::Rcode::NxDomain
    );
    // TCP works too.
    {
        let mut s = netns::connect_tcp(&pod.netns, server, None)
            .await
            .expect("tcp dns");
        let q = dns::build_query(7, "httpbin.default.svc.cluster.local", 1);
        s.write_u16(q.len() as u16).await.expect("len");
        s.write_all(&q).await.expect("q");
        let n = s.read_u16().await.expect("rlen") as usize;
        let mut r = vec![0u8; n];
        s.read_exact(&mut r).await.expect("r");
        assert_eq!(
            dns::parse_response(&r).expect("parse").2,
            vec![Ipv4Addr::new(10, 96, 0, 10)]
        );
    }

    // A real resolver (glibc via getent) inside the pod's mount namespace, short names via search domains.
    let dir = tempfile::tempdir().expect("tmp");
    let sb = sandbox(&mesh, &pod, dir.path(), "sleep", vec![]);
    let s = spec("sleep", &["sleep", "1"]);
    let (code, out) = capture_exec(&sb, None, &s, &["getent", "ahostsv4", "httpbin"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("10.96.0.10"), "{out}");
    let (code, out) = capture_exec(&sb, None, &s, &["getent", "hosts", "api.partner.example"]);
    assert_eq!((code, out.contains("10.244.0.77")), (0, true), "{out}");
    let (code, out) = capture_exec(&sb, None, &s, &["getent", "hosts", "nothere.example"]);
    assert_eq!(code, 2, "unknown names do not resolve: {out}");
    let (code, out) = capture_exec(&sb, None, &s, &["cat", "/etc/resolv.conf"]);
    assert!(
        code == 0 && out.contains(&format!("nameserver {}", mesh.dns_ip())),
        "{out}"
    );

    // Runtime update of both tables.
    mesh_table.insert(
        "late.default.svc.cluster.local",
        vec![Ipv4Addr::new(10, 96, 0, 99)],
    );
    outside.remove("api.partner.example");
    assert_eq!(
        udp_query(&pod.netns, server, "late.default.svc.cluster.local")
            .await
            .1,
        vec![Ipv4Addr::new(10, 96, 0, 99)]
    );
    assert_eq!(
        udp_query(&pod.netns, server, "api.partner.example").await.0,
        dns::Rcode::NxDomain
    );
    mesh.down().expect("down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_see_volumes_exec_passes_exit_codes_and_restart_policies_apply() {
    if !available("containers_see_volumes_exec_passes_exit_codes_and_restart_policies_apply") {
        return;
    }
    let mesh = fresh_mesh("tproc");
    let pod = mesh.add_pod("default/web").expect("pod");
    let dir = tempfile::tempdir().expect("tmp");
    let secret_dir = "/etc/isthmus-test-tproc/certs";
    assert!(!std::path::Path::new("/etc/isthmus-test-tproc").exists());
    let volumes = vec![
        process::Volume {
            name: "certs".into(),
            source: process::VolumeSource::Secret(
                [("tls.crt".to_string(), b"SECRET-CERT".to_vec())].into(),
            ),
            default_mode: Some(0o600),
        },
        process::Volume {
            name: "conf".into(),
            source: process::VolumeSource::ConfigMap(
                [("app.conf".to_string(), b"listen 8080".to_vec())].into(),
            ),
            default_mode: None,
        },
        process::Volume {
            name: "scratch".into(),
            source: process::VolumeSource::EmptyDir,
            default_mode: None,
        },
    ];
    let sb = sandbox(&mesh, &pod, dir.path(), "web-1", volumes);
    let mut s = spec(
        "web",
        &["sh", "-c", "cat /etc/isthmus-test-tproc/certs/tls.crt; echo; cat /srv/app.conf; echo; hostname; pwd; echo \"E=$GREETING\"; echo shared > /data/x; exec sleep 600"],
    );
    s.env = vec![("GREETING".into(), "hello".into())];
    s.working_dir = Some("/etc/isthmus-test-tproc".into());
    s.mounts = vec![
        process::VolumeMount {
            name: "certs".into(),
            mount_path: secret_dir.into(),
            sub_path: None,
            read_only: true,
        },
        process::VolumeMount {
            name: "conf".into(),
            mount_path: "/srv/app.conf".into(),
            sub_path: Some("app.conf".into()),
            read_only: false,
        },
        process::VolumeMount {
            name: "scratch".into(),
            mount_path: "/data".into(),
            sub_path: None,
            read_only: false,
        },
    ];
    let top_created = !std::path::Path::new("/data").exists();
    let c = process::Supervised::start(
        sb.clone(),
        s.clone(),
        process::RestartPolicy::Always,
        process::Backoff::default(),
    )
    .expect("start");
    let log = sb.log_path("web");
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("E=") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        text.contains("SECRET-CERT"),
        "secret visible at its mountPath: {text}"
    );
    assert!(
        text.contains("listen 8080"),
        "configMap subPath visible: {text}"
    );
    assert!(text.contains("web-1"), "hostname set: {text}");
    assert!(
        text.contains("/etc/isthmus-test-tproc\n"),
        "workingDir: {text}"
    );
    assert!(text.contains("E=hello"), "env: {text}");
    let st = c.status();
    assert_eq!(st.state, process::ContainerState::Running);
    let pid = st.pid.expect("pid");
    // Nothing leaked to the host's mount namespace.
    assert!(
        !std::path::Path::new("/etc/isthmus-test-tproc").exists(),
        "mount point leaked to the host"
    );
    assert_eq!(
        std::fs::read_to_string(sb.volume_dir("scratch").join("x"))
            .expect("emptyDir shared")
            .trim(),
        "shared"
    );

    // exec into the running container: same mounts, exit codes passed through.
    let (code, out) = capture_exec(
        &sb,
        Some(pid),
        &s,
        &["cat", "/etc/isthmus-test-tproc/certs/tls.crt"],
    );
    assert_eq!((code, out.as_str()), (0, "SECRET-CERT"));
    assert_eq!(
        capture_exec(&sb, Some(pid), &s, &["cat", "/etc/hostname"]),
        (0, "web-1\n".to_string())
    );
    let (_, wd) = capture_exec(&sb, Some(pid), &s, &["pwd"]);
    assert_eq!(
        wd.trim(),
        "/etc/isthmus-test-tproc",
        "exec starts in the container's workingDir"
    );
    assert_eq!(
        capture_exec(&sb, Some(pid), &s, &["sh", "-c", "exit 7"]).0,
        7
    );
    assert_eq!(capture_exec(&sb, Some(pid), &s, &["false"]).0, 1);
    let (code, _) = capture_exec(
        &sb,
        Some(pid),
        &s,
        &["sh", "-c", "echo x > /etc/isthmus-test-tproc/certs/new"],
    );
    assert_ne!(code, 0, "secret volume is read-only");
    assert_eq!(
        capture_exec(&sb, Some(pid), &s, &["sh", "-c", "kill -9 $$"]).0,
        137,
        "signal maps to 128+N"
    );
    let (_, ip_out) = capture_exec(
        &sb,
        Some(pid),
        &s,
        &["ip", "-o", "-4", "addr", "show", "eth0"],
    );
    assert!(
        ip_out.contains(&pod.ip.to_string()),
        "exec runs in the pod network: {ip_out}"
    );
    // exec with stdin passed through.
    {
        use std::io::Write;
        let mut cmd = sb
            .exec_command(
                Some(pid),
                &s,
                &[
                    "sh".into(),
                    "-c".into(),
                    "read l; echo got:$l; exit 3".into(),
                ],
            )
            .expect("cmd");
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"abc\n")
            .expect("write");
        let out = child.wait_with_output().expect("wait");
        assert_eq!(
            (
                process::exit_code(out.status),
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            ),
            (3, "got:abc".to_string())
        );
    }

    // Killing the process: restarted (Always) and the restart is counted.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let mut w = c.watch();
    let restarted = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            {
                let s = w.borrow_and_update();
                if s.restarts >= 1 && s.state == process::ContainerState::Running {
                    return s.clone();
                }
            }
            if w.changed().await.is_err() {
                panic!("supervisor ended");
            }
        }
    })
    .await
    .expect("restarted in time");
    assert_eq!(restarted.last_exit_code, Some(137));
    assert_ne!(restarted.pid, Some(pid));
    let final_status = c.stop(Duration::from_secs(2)).await;
    assert!(
        matches!(
            final_status.state,
            process::ContainerState::Terminated { .. }
        ),
        "{final_status:?}"
    );
    let newpid = restarted.pid.expect("pid") as i32;
    assert!(!alive(newpid), "process gone after stop");

    // Restart policies with a fast backoff.
    let fast = process::Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(50),
        reset_after: Duration::from_secs(60),
    };
    let never = process::Supervised::start(
        sb.clone(),
        spec("never", &["sh", "-c", "exit 3"]),
        process::RestartPolicy::Never,
        fast,
    )
    .expect("start");
    let on_fail = process::Supervised::start(
        sb.clone(),
        spec("onfail", &["sh", "-c", "exit 4"]),
        process::RestartPolicy::OnFailure,
        fast,
    )
    .expect("start");
    let ok_once = process::Supervised::start(
        sb.clone(),
        spec("okonce", &["true"]),
        process::RestartPolicy::OnFailure,
        fast,
    )
    .expect("start");
    let never_done = wait_status(&never, |s| {
        matches!(s.state, process::ContainerState::Terminated { .. })
    })
    .await;
    assert_eq!(
        (never_done.restarts, never_done.state),
        (
            0,
            process::ContainerState::Terminated {
                exit_code: 3,
                reason: "Error".into()
            }
        )
    );
    let failing = wait_status(&on_fail, |s| s.restarts >= 2).await;
    assert_eq!(failing.last_exit_code, Some(4));
    let o = wait_status(&ok_once, |s| {
        matches!(s.state, process::ContainerState::Terminated { .. })
    })
    .await;
    assert_eq!(
        (o.restarts, o.state),
        (
            0,
            process::ContainerState::Terminated {
                exit_code: 0,
                reason: "Completed".into()
            }
        )
    );
    // Always restarts even after a clean exit.
    let always = process::Supervised::start(
        sb.clone(),
        spec("always", &["true"]),
        process::RestartPolicy::Always,
        fast,
    )
    .expect("start");
    assert!(wait_status(&always, |s| s.restarts >= 2).await.restarts >= 2);
    drop(always);
    drop(on_fail);
    // A spec naming an unknown volume is rejected up front.
    let mut bad = spec("bad", &["true"]);
    bad.mounts = vec![process::VolumeMount {
        name: "nope".into(),
        mount_path: "/x".into(),
        sub_path: None,
        read_only: false,
    }];
    assert!(matches!(
        process::Supervised::start(sb.clone(), bad, process::RestartPolicy::Never, fast),
        Err(process::ProcessError::UnknownVolume { .. })
    ));

    // A background process started by a container dies with the mesh.
    let bg = process::Supervised::start(
        sb.clone(),
        spec("bg", &["sh", "-c", "sleep 600 & sleep 600"]),
        process::RestartPolicy::Never,
        fast,
    )
    .expect("start");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pids_before = isthmus_local::cmd::ip(&["netns", "pids", &pod.netns]).expect("pids");
    assert!(pids_before.split_whitespace().count() >= 2, "{pids_before}");
    std::mem::forget(bg); // simulate a crashed supervisor: only `down` is left to clean up
    sb.cleanup();
    if top_created {
        assert!(
            !std::path::Path::new("/data").exists(),
            "top-level mount point removed by cleanup"
        );
    }
    mesh.down().expect("down");
    for p in pids_before
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        assert!(!alive(p), "pid {p} survived down");
    }
    assert!(net::list_netns("isth-tproc-").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_from_host_loopback_reaches_server_in_pod() {
    if !available("relay_from_host_loopback_reaches_server_in_pod") {
        return;
    }
    let mesh = fresh_mesh("trelay");
    let gw = mesh.add_pod("istio-system/ingressgateway").expect("pod");
    let l = netns::listen_tcp_async(&gw.netns, (gw.ip, 8080).into())
        .await
        .expect("listen");
    let _echo =
        isthmus_local::echo::EchoServer::serve("ingress", vec![l], vec![], None).expect("echo");
    let r = relay::PortRelay::start(
        "127.0.0.1:0".parse().unwrap(),
        mesh.node_netns(),
        (gw.ip, 8080).into(),
    )
    .await
    .expect("relay");
    let port = r.local_addr().port();
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--resolve",
            &format!("bookinfo.example:{port}:127.0.0.1"),
            &format!("http://bookinfo.example:{port}/get?x=1"),
        ])
        .output()
        .await
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["server"], "ingress");
    assert_eq!(v["host"], format!("bookinfo.example:{port}"));
    assert_eq!(v["query"], "x=1");
    assert_eq!(
        v["peer_ip"],
        mesh.gateway_ip().to_string(),
        "connection entered through the node namespace"
    );
    assert_eq!(r.accepted(), 1);
    drop(r);
    mesh.down().expect("down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_all_removes_leftovers_of_a_crashed_run() {
    if !available("cleanup_all_removes_leftovers_of_a_crashed_run") {
        return;
    }
    let prefix = "isthct";
    let _ = net::cleanup_all(prefix);
    let mut cfg = net::MeshNetConfig::new("crashed");
    cfg.prefix = prefix.to_string();
    let mesh = net::MeshNet::up(cfg).expect("up");
    let p = mesh.add_pod("default/a").expect("pod");
    let _ = mesh.add_pod("default/b").expect("pod");
    capture::install_capture(&p.netns, &capture::CaptureConfig::default()).expect("capture");
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &p.netns, "sleep", "600"])
        .spawn()
        .expect("sleep");
    std::mem::forget(mesh); // the supervisor "crashed"
    std::thread::sleep(Duration::from_millis(100));
    let removed = net::cleanup_all(prefix).expect("cleanup");
    assert_eq!(removed.len(), 3, "{removed:?}");
    assert!(net::list_netns(&format!("{prefix}-")).is_empty());
    let status = child.wait().expect("wait");
    assert!(!status.success(), "leftover process was killed");
    assert!(net::cleanup_all("bad prefix").is_err());

    // cleanup_mesh removes one crashed mesh and leaves a mesh whose name shares its prefix.
    let up = |mesh: &str| {
        let mut cfg = net::MeshNetConfig::new(mesh);
        cfg.prefix = prefix.to_string();
        net::MeshNet::up(cfg).expect("up")
    };
    let short = up("m");
    let long = up("m-x");
    short.add_pod("default/p").expect("pod");
    long.add_pod("default/p").expect("pod");
    std::mem::forget(short);
    let removed = net::cleanup_mesh(prefix, "m").expect("cleanup mesh");
    assert_eq!(
        removed,
        vec![format!("{prefix}-m-default-p"), format!("{prefix}-m-node")]
    );
    assert_eq!(
        net::list_netns(&format!("{prefix}-")),
        vec![
            format!("{prefix}-m-x-default-p"),
            format!("{prefix}-m-x-node")
        ]
    );
    assert!(net::cleanup_mesh(prefix, "m")
        .expect("absent mesh")
        .is_empty());
    long.down().expect("down");
    assert!(net::list_netns(&format!("{prefix}-")).is_empty());
}

/// A stand-in for the sidecar proxy: accepts redirected connections, recovers the original
/// destination and connects there with the proxy mark, recording what it saw.
async fn mini_proxy(
    ns: &str,
    port: u16,
) -> (
    tokio::task::JoinHandle<()>,
    Arc<std::sync::Mutex<Vec<SocketAddrV4>>>,
) {
    let factory = netns::NetnsThread::spawn(ns).expect("netns thread");
    let l = factory
        .listen_tcp(SocketAddr::from(([0, 0, 0, 0], port)))
        .await
        .expect("proxy listener");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut down, _)) = l.accept().await else {
                continue;
            };
            let Ok(od) = capture::original_dst(&down) else {
                continue;
            };
            seen2.lock().expect("lock").push(od);
            let factory = factory.clone();
            tokio::spawn(async move {
                if let Ok(mut up) = factory
                    .connect_tcp(SocketAddr::V4(od), Some(capture::PROXY_MARK))
                    .await
                {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    });
    (task, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_in_a_sidecar_pod_goes_through_both_proxies_to_the_echo_server() {
    if !available("curl_in_a_sidecar_pod_goes_through_both_proxies_to_the_echo_server") {
        return;
    }
    let mesh = fresh_mesh("tside");
    let a = mesh.add_pod("default/sleep").expect("pod");
    let b = mesh.add_pod("default/httpbin").expect("pod");
    for p in [&a, &b] {
        capture::install_capture(&p.netns, &capture::CaptureConfig::default()).expect("capture");
    }
    let table = dns::DnsTable::from_entries([(
        "httpbin.default.svc.cluster.local".to_string(),
        vec![b.ip],
    )]);
    let _dns = dns::DnsServer::bind(
        Some(mesh.node_netns()),
        (mesh.dns_ip(), 53).into(),
        table,
        None,
    )
    .await
    .expect("dns");
    let l = netns::listen_tcp_async(&b.netns, "0.0.0.0:8080".parse().unwrap())
        .await
        .expect("listen");
    let _echo =
        isthmus_local::echo::EchoServer::serve("httpbin", vec![l], vec![], None).expect("echo");
    // Readiness probe over the pod's loopback (never captured).
    netns::wait_tcp(
        &b.netns,
        "127.0.0.1:8080".parse().unwrap(),
        Duration::from_secs(5),
    )
    .await
    .expect("echo ready");
    let closed = netns::wait_tcp(
        &b.netns,
        "127.0.0.1:8081".parse().unwrap(),
        Duration::from_millis(200),
    )
    .await;
    assert!(closed.is_err(), "nothing listens on 8081");
    let (_out_a, seen_out) = mini_proxy(&a.netns, capture::OUTBOUND_PORT).await;
    let (_in_b, seen_in) = mini_proxy(&b.netns, capture::INBOUND_PORT).await;

    let dir = tempfile::tempdir().expect("tmp");
    let sb = sandbox(&mesh, &a, dir.path(), "sleep", vec![]);
    let s = spec("sleep", &["sleep", "1"]);
    let (code, out) = tokio::task::spawn_blocking(move || {
        capture_exec(
            &sb,
            None,
            &s,
            &["curl", "-sS", "--max-time", "10", "http://httpbin:8080/get"],
        )
    })
    .await
    .expect("join");
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["server"], "httpbin");
    assert_eq!(v["host"], "httpbin:8080");
    let want = SocketAddrV4::new(b.ip, 8080);
    assert_eq!(
        *seen_out.lock().expect("lock"),
        vec![want],
        "outbound proxy saw the original destination"
    );
    assert_eq!(
        *seen_in.lock().expect("lock"),
        vec![want],
        "inbound proxy saw the original destination"
    );
    mesh.down().expect("down");
}
