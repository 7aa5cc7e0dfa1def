//! DestinationRule consolidation and lookup with istiod's exact rules
//! (`PushContext.setDestinationRules`, `mergeDestinationRule`, `destinationRule`,
//! `SidecarScope.DestinationRule`; reference §1).

use crate::host::{host_matches, specificity};
use crate::types::{ConfigMeta, DestinationRuleConfig};
use isthmus_api::istio::DestinationRule;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Several same-host DRs merged into one (subsets unioned, oldest top-level policy wins).
#[derive(Debug, Clone)]
pub struct MergedDestinationRule {
    /// Normalised host (short names expanded with the DR's namespace).
    pub host: String,
    pub spec: DestinationRule,
    /// The first (oldest) DR: its name is the one in `filterMetadata.istio.config`.
    pub meta: ConfigMeta,
    /// All DRs merged into this one, oldest first.
    pub from: Vec<ConfigMeta>,
    pub export_to: BTreeSet<String>,
    pub selector: Option<BTreeMap<String, String>>,
    /// Subset names dropped as duplicates, with the DR that carried them.
    pub duplicate_subsets: Vec<(String, ConfigMeta)>,
}

#[derive(Debug, Default, Clone)]
struct HostIndex {
    specific: HashMap<String, Vec<MergedDestinationRule>>,
    wildcard: Vec<(String, Vec<MergedDestinationRule>)>,
}

impl HostIndex {
    fn bucket(&mut self, host: &str) -> &mut Vec<MergedDestinationRule> {
        if host.starts_with('*') {
            if let Some(i) = self.wildcard.iter().position(|(h, _)| h == host) {
                return &mut self.wildcard[i].1;
            }
            self.wildcard.push((host.to_string(), Vec::new()));
            let last = self.wildcard.len() - 1;
            &mut self.wildcard[last].1
        } else {
            self.specific.entry(host.to_string()).or_default()
        }
    }

    /// Most specific match (`MostSpecificHostMatch`): exact key first, then the longest wildcard.
    fn lookup(&self, host: &str) -> Option<&Vec<MergedDestinationRule>> {
        if let Some(v) = self.specific.get(host) {
            return Some(v);
        }
        let mut best: Option<(&str, &Vec<MergedDestinationRule>)> = None;
        for (h, v) in &self.wildcard {
            if host_matches(h, host) && best.is_none_or(|(b, _)| specificity(h) > specificity(b)) {
                best = Some((h, v));
            }
        }
        // A wildcard service host is matched by exact-string specific entries only above.
        best.map(|(_, v)| v)
    }
}

/// The consolidated DR indexes of a snapshot.
#[derive(Debug, Default, Clone)]
pub struct DestinationRuleIndex {
    namespace_local: HashMap<String, HostIndex>,
    exported_by_namespace: HashMap<String, HostIndex>,
    root_namespace_local: HostIndex,
    root_namespace: String,
}

fn merge_into(bucket: &mut Vec<MergedDestinationRule>, incoming: &MergedDestinationRule) {
    let mut append_separately = true;
    if bucket.is_empty() {
        bucket.push(incoming.clone());
        return;
    }
    for mdr in bucket.iter_mut() {
        // exportTo: equal → merge; superset of a non-empty existing one → merge and append too.
        let equal = mdr.export_to == incoming.export_to;
        let superset = !mdr.export_to.is_empty() && incoming.export_to.is_superset(&mdr.export_to);
        if equal {
            append_separately = false;
        } else if superset {
            append_separately = true;
        } else {
            append_separately = true;
            continue;
        }
        if let (Some(a), Some(b)) = (&mdr.selector, &incoming.selector) {
            if a != b {
                append_separately = true;
                continue;
            }
        }
        // Merge subsets (first wins per name) and adopt the trafficPolicy only if none yet.
        let existing: BTreeSet<String> = mdr.spec.subsets.iter().map(|s| s.name.clone()).collect();
        for s in &incoming.spec.subsets {
            if existing.contains(&s.name) {
                mdr.duplicate_subsets
                    .push((s.name.clone(), incoming.meta.clone()));
            } else {
                mdr.spec.subsets.push(s.clone());
            }
        }
        if mdr.spec.traffic_policy.is_none() && incoming.spec.traffic_policy.is_some() {
            mdr.spec.traffic_policy = incoming.spec.traffic_policy.clone();
        }
        mdr.from.push(incoming.meta.clone());
        if mdr.selector == incoming.selector {
            append_separately = false;
        }
    }
    if append_separately {
        bucket.push(incoming.clone());
    }
}

impl DestinationRuleIndex {
    /// Builds the indexes. `drs` in any order; `default_export_to` is the mesh's
    /// `defaultDestinationRuleExportTo`.
    pub fn build(
        drs: &[DestinationRuleConfig],
        domain: &str,
        root_namespace: &str,
        default_export_to: &[String],
    ) -> DestinationRuleIndex {
        let mut sorted: Vec<&DestinationRuleConfig> = drs.iter().collect();
        sorted.sort_by(|a, b| {
            let sa = a.spec.workload_selector.is_some();
            let sb = b.spec.workload_selector.is_some();
            sb.cmp(&sa)
                .then_with(|| a.meta.age_key().cmp(&b.meta.age_key()))
                .then_with(|| a.meta.name.cmp(&b.meta.name))
                .then_with(|| a.meta.namespace.cmp(&b.meta.namespace))
        });
        let mut idx = DestinationRuleIndex {
            root_namespace: root_namespace.to_string(),
            ..Default::default()
        };
        for dr in sorted {
            let ns = dr.meta.namespace.as_str();
            let host = crate::host::resolve_short_name(&dr.spec.host, ns, domain);
            let selector = dr
                .spec
                .workload_selector
                .as_ref()
                .map(|w| w.selector().clone());
            let export_to: BTreeSet<String> = if selector.is_some() {
                BTreeSet::from([".".to_string()])
            } else {
                dr.spec.export_to.iter().cloned().collect()
            };
            let merged = MergedDestinationRule {
                host: host.clone(),
                spec: dr.spec.clone(),
                meta: dr.meta.clone(),
                from: vec![dr.meta.clone()],
                export_to: export_to.clone(),
                selector,
                duplicate_subsets: vec![],
            };
            let local = export_to.is_empty()
                || export_to.contains("*")
                || export_to.contains(".")
                || export_to.contains(ns);
            let private_only = (export_to.is_empty() && default_export_to.iter().any(|e| e == "."))
                || (export_to.len() == 1 && (export_to.contains(".") || export_to.contains(ns)));
            if local {
                merge_into(
                    idx.namespace_local
                        .entry(ns.to_string())
                        .or_default()
                        .bucket(&host),
                    &merged,
                );
            }
            if !private_only {
                merge_into(
                    idx.exported_by_namespace
                        .entry(ns.to_string())
                        .or_default()
                        .bucket(&host),
                    &merged,
                );
            } else if ns == root_namespace {
                merge_into(idx.root_namespace_local.bucket(&host), &merged);
            }
        }
        idx
    }

    /// `PushContext.destinationRule(proxyNS, service)`: client ns → service ns → root ns; the
    /// first level with any match wins, no merging across levels.
    pub fn lookup(
        &self,
        proxy_ns: &str,
        service_ns: &str,
        host: &str,
    ) -> Vec<&MergedDestinationRule> {
        if proxy_ns != self.root_namespace {
            if let Some(v) = self
                .namespace_local
                .get(proxy_ns)
                .and_then(|i| i.lookup(host))
            {
                if !v.is_empty() {
                    return v.iter().collect();
                }
            }
        } else if let Some(v) = self.root_namespace_local.lookup(host) {
            if !v.is_empty() {
                return v.iter().collect();
            }
        }
        for ns in [service_ns, self.root_namespace.as_str()] {
            if let Some(v) = self
                .exported_by_namespace
                .get(ns)
                .and_then(|i| i.lookup(host))
            {
                let visible: Vec<&MergedDestinationRule> = v
                    .iter()
                    .filter(|d| {
                        d.export_to.is_empty()
                            || d.export_to.contains("*")
                            || d.export_to.contains(proxy_ns)
                    })
                    .collect();
                if !visible.is_empty() {
                    return visible;
                }
            }
        }
        Vec::new()
    }

    /// `SidecarScope.DestinationRule` for the outbound direction: a selector DR in the proxy's
    /// namespace whose selector is a subset of the proxy labels wins; else the last
    /// selector-less entry. For inbound (`outbound = false`) selectors are ignored.
    pub fn select<'a>(
        candidates: &[&'a MergedDestinationRule],
        proxy_ns: &str,
        proxy_labels: &BTreeMap<String, String>,
        outbound: bool,
    ) -> Option<&'a MergedDestinationRule> {
        if outbound {
            for d in candidates {
                if let Some(sel) = &d.selector {
                    if d.meta.namespace == proxy_ns
                        && sel.iter().all(|(k, v)| proxy_labels.get(k) == Some(v))
                    {
                        return Some(d);
                    }
                }
            }
        }
        candidates
            .iter()
            .rev()
            .find(|d| d.selector.is_none())
            .copied()
    }

    /// `select(&lookup(..), ..)` without building the candidate list: the compiler asks this for
    /// every service of every proxy (10k+ per compile).
    pub fn lookup_select(
        &self,
        proxy_ns: &str,
        service_ns: &str,
        host: &str,
        proxy_labels: &BTreeMap<String, String>,
        outbound: bool,
    ) -> Option<&MergedDestinationRule> {
        // One pass: the first selector DR that applies, else the last selector-less one.
        fn pick<'a>(
            cands: impl Iterator<Item = &'a MergedDestinationRule>,
            proxy_ns: &str,
            proxy_labels: &BTreeMap<String, String>,
            outbound: bool,
        ) -> (bool, Option<&'a MergedDestinationRule>) {
            let mut any = false;
            let mut last_plain = None;
            for d in cands {
                any = true;
                match &d.selector {
                    Some(sel) => {
                        if outbound
                            && d.meta.namespace == proxy_ns
                            && sel.iter().all(|(k, v)| proxy_labels.get(k) == Some(v))
                        {
                            return (true, Some(d));
                        }
                    }
                    None => last_plain = Some(d),
                }
            }
            (any, last_plain)
        }
        let local = if proxy_ns != self.root_namespace {
            self.namespace_local
                .get(proxy_ns)
                .and_then(|i| i.lookup(host))
        } else {
            self.root_namespace_local.lookup(host)
        };
        if let Some(v) = local {
            if !v.is_empty() {
                return pick(v.iter(), proxy_ns, proxy_labels, outbound).1;
            }
        }
        for ns in [service_ns, self.root_namespace.as_str()] {
            if let Some(v) = self
                .exported_by_namespace
                .get(ns)
                .and_then(|i| i.lookup(host))
            {
                let visible = v.iter().filter(|d| {
                    d.export_to.is_empty()
                        || d.export_to.contains("*")
                        || d.export_to.contains(proxy_ns)
                });
                let (any, d) = pick(visible, proxy_ns, proxy_labels, outbound);
                if any {
                    return d;
                }
            }
        }
        None
    }

    /// Every consolidated DR (for analysis: DRs whose host matches no service).
    pub fn all(&self) -> impl Iterator<Item = &MergedDestinationRule> {
        let a = self
            .namespace_local
            .values()
            .chain(self.exported_by_namespace.values())
            .chain(std::iter::once(&self.root_namespace_local));
        a.flat_map(|i| {
            i.specific
                .values()
                .flatten()
                .chain(i.wildcard.iter().flat_map(|(_, v)| v.iter()))
        })
    }
}
