//! Route tables and virtual hosts shared across the proxies compiled from one snapshot.
//!
//! istiod caches RDS per route name keyed by what the routes depend on (namespace, Sidecar
//! scope, source labels, exportTo visibility, gateway, port). Here the dependency set is not
//! guessed but recorded: while one VirtualService's `http` routes are translated, [`Ctx`]
//! logs every proxy-dependent lookup (which service a host name resolves to, which
//! DestinationRule a service selects); a later proxy reuses the routes when
//! - the key matches: VirtualService, port, default port, the gateways the routes are built
//!   for, and the outcome of every `sourceLabels` / `sourceNamespace` match against the proxy
//!   (those read the proxy directly, not through a logged lookup), and
//! - replaying the log for that proxy gives the same answers.
//!
//! Anything with side effects that name the proxy is not shared: a translation that reported
//! a diagnostic is rebuilt on every compile (as the cluster cache does), and VirtualServices
//! with `delegate` rules are never shared (their merged matches mix in the delegate's
//! conditions). The (host, subset) pairs a build marked as used are replayed on reuse.
//!
//! Virtual hosts are shared on top: a sidecar vhost is a function of the service, the port,
//! whether the proxy sits in the service's namespace (the short-name domain) and the route
//! table; a gateway vhost of its host, port and route table.

use crate::route::{translate_http, RouteCtx};
use crate::scope::{addr_of, Ctx, DepLog, FastMap};
use isthmus_model::{Service, VirtualServiceConfig};
use isthmus_xds::{Route, VirtualHost};
use std::sync::{Arc, Mutex};

/// More variants than this for one key means the key is too coarse for that config (say, a
/// VS whose destinations every namespace sees differently); further builds are not kept.
const MAX_VARIANTS: usize = 32;

/// One shared translation of a VirtualService's `http` routes.
struct Variant {
    gateways: String,
    deps: DepLog,
    used: Arc<Vec<(String, String)>>,
    routes: Arc<Vec<Route>>,
}

type RouteKey = (usize, u32, u32, u64);
type SidecarVhosts = FastMap<(usize, u32, bool, usize), Arc<VirtualHost>>;
type GatewayVhosts = FastMap<(usize, u32), Vec<(String, Arc<VirtualHost>)>>;

/// Per-snapshot cache (a `Snapshot::extension`).
#[derive(Default)]
pub(crate) struct RouteCache {
    routes: Mutex<FastMap<RouteKey, Vec<Variant>>>,
    /// (service, port, short-name domain, route table) → sidecar vhost.
    sidecar_vhosts: Mutex<SidecarVhosts>,
    /// (route table, port) → gateway vhosts by host.
    gateway_vhosts: Mutex<GatewayVhosts>,
}

/// Translated routes: shared (`Some(table id)`, usable as a cache key while the snapshot
/// lives) or built for this proxy alone (`None`).
pub(crate) struct Routes {
    pub routes: Arc<Vec<Route>>,
    pub shared: Option<usize>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Entries are inserted whole; a panic elsewhere leaves nothing half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The outcome of each source-conditioned match block of `vs` for this proxy, one bit per
/// block in order; `None` when the VS cannot be shared (delegates, more than 64 such blocks).
/// Mirrors `route::match_applies`' source test: every label equal, namespace equal if set.
fn source_signature(ctx: &Ctx, vs: &VirtualServiceConfig) -> Option<u64> {
    let mut sig = 0u64;
    let mut bit = 0u32;
    for h in &vs.spec.http {
        if h.delegate.is_some() {
            return None;
        }
        for m in &h.matches {
            if m.source_labels.is_empty() && m.source_namespace.is_none() {
                continue;
            }
            if bit >= 64 {
                return None;
            }
            let hit = m
                .source_labels
                .iter()
                .all(|(k, v)| ctx.proxy.labels.get(k) == Some(v))
                && m.source_namespace
                    .as_deref()
                    .is_none_or(|n| n == ctx.proxy.namespace);
            if hit {
                sig |= 1 << bit;
            }
            bit += 1;
        }
    }
    Some(sig)
}

fn gateways_key(rc: &RouteCtx) -> String {
    let mut s = String::new();
    for g in rc.gateways {
        s.push_str(g);
        s.push('\n');
    }
    s
}

/// [`translate_http`], shared with earlier proxies of the snapshot when that is exact.
pub(crate) fn http_routes<'a>(
    ctx: &mut Ctx<'a>,
    vs: &'a VirtualServiceConfig,
    rc: &RouteCtx,
    default_port: u32,
) -> Routes {
    let fresh = |ctx: &mut Ctx<'a>| {
        let (routes, _) = translate_http(ctx, vs, rc, default_port);
        Routes {
            routes: Arc::new(routes),
            shared: None,
        }
    };
    let Some(sig) = source_signature(ctx, vs) else {
        return fresh(ctx);
    };
    // A recording already in progress (not expected: translations do not nest) would mix
    // two logs.
    if ctx.deps.borrow().is_some() || ctx.used_subsets.log.is_some() {
        return fresh(ctx);
    }
    let key: RouteKey = (
        vs as *const VirtualServiceConfig as usize,
        rc.port,
        default_port,
        sig,
    );
    let gws = gateways_key(rc);
    let cache = ctx.route_cache.clone();
    {
        let map = lock(&cache.routes);
        if let Some(list) = map.get(&key) {
            for v in list {
                if v.gateways == gws && ctx.replays(&v.deps) {
                    ctx.used_subsets.replay(&v.used);
                    return Routes {
                        routes: v.routes.clone(),
                        shared: Some(Arc::as_ptr(&v.routes) as usize),
                    };
                }
            }
        }
    }
    let d0 = ctx.diags.len();
    *ctx.deps.borrow_mut() = Some(DepLog::default());
    ctx.used_subsets.log = Some(Vec::new());
    let (routes, _) = translate_http(ctx, vs, rc, default_port);
    let deps = ctx.deps.borrow_mut().take().unwrap_or_default();
    let mut used = ctx.used_subsets.log.take().unwrap_or_default();
    used.retain(|(h, s)| !crate::scope::routed_anywhere(ctx.snap, h, s));
    let used = Arc::new(used);
    let routes = Arc::new(routes);
    if ctx.diags.len() != d0 || deps.foreign {
        return Routes {
            routes,
            shared: None,
        };
    }
    let mut map = lock(&cache.routes);
    let list = map.entry(key).or_default();
    // Another thread may have built the same variant meanwhile: use its copy, so that equal
    // tables have one identity (vhost sharing keys on it).
    for v in list.iter() {
        if v.gateways == gws && ctx.replays(&v.deps) {
            return Routes {
                routes: v.routes.clone(),
                shared: Some(Arc::as_ptr(&v.routes) as usize),
            };
        }
    }
    if list.len() >= MAX_VARIANTS {
        return Routes {
            routes,
            shared: None,
        };
    }
    let shared = Some(Arc::as_ptr(&routes) as usize);
    list.push(Variant {
        gateways: gws,
        deps,
        used,
        routes: routes.clone(),
    });
    Routes { routes, shared }
}

/// The sidecar vhost of `svc` on `port`, shared when its route table is (`table`: the shared
/// table's id, 0 for the default route, `None` for a table built for this proxy alone).
pub(crate) fn sidecar_vhost(
    ctx: &Ctx,
    svc: &Service,
    port: u32,
    short: bool,
    table: Option<usize>,
    build: impl FnOnce() -> VirtualHost,
) -> Arc<VirtualHost> {
    let Some(table) = table else {
        return Arc::new(build());
    };
    let key = (addr_of(Some(svc)), port, short, table);
    let cache = &ctx.route_cache;
    if let Some(v) = lock(&cache.sidecar_vhosts).get(&key) {
        return v.clone();
    }
    let v = Arc::new(build());
    lock(&cache.sidecar_vhosts).entry(key).or_insert(v).clone()
}

/// The gateway vhost for `host` on `port` made of one shared route table.
pub(crate) fn gateway_vhost(
    ctx: &Ctx,
    host: &str,
    port: u32,
    table: usize,
    build: impl FnOnce() -> VirtualHost,
) -> Arc<VirtualHost> {
    let cache = &ctx.route_cache;
    if let Some(v) = lock(&cache.gateway_vhosts)
        .get(&(table, port))
        .and_then(|l| l.iter().find(|(h, _)| h == host))
    {
        return v.1.clone();
    }
    let v = Arc::new(build());
    let mut map = lock(&cache.gateway_vhosts);
    let list = map.entry((table, port)).or_default();
    if let Some((_, existing)) = list.iter().find(|(h, _)| h == host) {
        return existing.clone();
    }
    list.push((host.to_string(), v.clone()));
    v
}
