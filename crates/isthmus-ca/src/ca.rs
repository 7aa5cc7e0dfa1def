//! The signing CA: a generated self-signed root, or user-supplied Istio `cacerts` files.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use isthmus_tls::{parse_certs, CertSummary, Identity};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::CaError;
use crate::key::CaKey;

/// Default workload certificate lifetime (Istio's `DEFAULT_WORKLOAD_CERT_TTL`, 24h).
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Lifetime of a generated root (Istio's self-signed root default, 10 years).
pub const DEFAULT_ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Workload certificates are back-dated by this much so that a peer whose clock is slightly
/// behind does not reject a fresh certificate as "not yet valid".
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// Istio `cacerts` file names.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// Signing key (mode 0600 when we write it).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Root of trust served to workloads (SDS `ROOTCA`).
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// Chain from the signing certificate up to the root.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";

/// The PEM material of a CA, in Istio `cacerts` layout.
#[derive(Clone)]
pub struct CaFiles {
    /// Signing certificate (`ca-cert.pem`).
    pub ca_cert_pem: String,
    /// Signing key (`ca-key.pem`).
    pub ca_key_pem: String,
    /// Root certificate(s) (`root-cert.pem`).
    pub root_cert_pem: String,
    /// Chain from the signing cert to the root (`cert-chain.pem`).
    pub cert_chain_pem: String,
}

impl std::fmt::Debug for CaFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaFiles").finish_non_exhaustive()
    }
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CaError::Io {
        action: "cannot write",
        path: path.to_path_buf(),
        source,
    };
    // Write to a temporary file and rename, so that a crash never leaves a half-written key.
    let tmp = path.with_extension("pem.tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    // `mode` only applies on creation; enforce it for a pre-existing temp file too.
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io)?;
    }
    fs::rename(&tmp, path).map_err(io)
}

impl CaFiles {
    /// Writes the four files into `dir` (created with mode 0700 if missing); the key gets 0600.
    pub fn write(&self, dir: &Path) -> Result<(), CaError> {
        use std::os::unix::fs::DirBuilderExt;
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| CaError::Io {
                    action: "cannot create",
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        write_file(&dir.join(CA_KEY_FILE), &self.ca_key_pem, 0o600)?;
        write_file(&dir.join(CA_CERT_FILE), &self.ca_cert_pem, 0o644)?;
        write_file(&dir.join(ROOT_CERT_FILE), &self.root_cert_pem, 0o644)?;
        write_file(&dir.join(CERT_CHAIN_FILE), &self.cert_chain_pem, 0o644)?;
        Ok(())
    }
}

/// A leaf certificate and key issued by the CA.
#[derive(Clone)]
pub struct IssuedCert {
    /// Leaf followed by the CA chain (SDS `default` certificate chain).
    pub cert_chain_pem: String,
    /// PKCS#8 private key of the leaf.
    pub key_pem: String,
    /// The mesh root(s) (SDS `ROOTCA`).
    pub root_pem: String,
    /// Leaf serial, lowercase hex.
    pub serial_hex: String,
    /// Leaf notBefore.
    pub not_before: SystemTime,
    /// Leaf notAfter.
    pub not_after: SystemTime,
    /// The identity in the URI SAN, for workload certificates.
    pub identity: Option<Identity>,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial_hex", &self.serial_hex)
            .field("identity", &self.identity)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// A hot-swappable certificate store holding this certificate (e.g. SDS `default`).
    pub fn to_cert_store(&self, name: &str) -> Result<isthmus_tls::CertStore, CaError> {
        Ok(isthmus_tls::CertStore::from_pem(
            name,
            self.cert_chain_pem.as_bytes(),
            self.key_pem.as_bytes(),
        )?)
    }
}

/// What a leaf certificate should contain (for workload certs use [`Ca::issue`]).
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// SANs; each is classified: `spiffe://...` or other `scheme://` → URI, an IP address → IP,
    /// anything else → DNS.
    pub sans: Vec<String>,
    /// Optional subject CN (SPIFFE SVIDs have none).
    pub common_name: Option<String>,
    /// Validity start.
    pub not_before: SystemTime,
    /// Validity end.
    pub not_after: SystemTime,
}

/// Where a CA came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaOrigin {
    /// Generated now (and persisted if a directory was given).
    Generated,
    /// Loaded from a directory (a root we generated earlier, or user `cacerts`).
    Loaded,
}

/// The mesh CA.
pub struct Ca {
    trust_domain: String,
    issuer: Issuer<'static, CaKey>,
    files: CaFiles,
    /// Signing cert followed by intermediates up to (and possibly including) the root.
    chain: Vec<CertificateDer<'static>>,
    workload_ttl: Duration,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .field("workload_ttl", &self.workload_ttl)
            .finish_non_exhaustive()
    }
}

fn to_offset(t: SystemTime) -> Result<OffsetDateTime, CaError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| CaError::Lifetime("time before 1970".to_string()))?
        .as_secs();
    let secs = i64::try_from(secs).map_err(|_| CaError::Lifetime("time out of range".into()))?;
    OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| CaError::Lifetime(format!("time out of range: {e}")))
}

fn from_unix(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// A random, positive, non-zero 128-bit serial (RFC 5280 allows up to 20 octets).
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn classify_san(s: &str) -> Result<SanType, CaError> {
    let ia5 = |v: &str| rcgen::string::Ia5String::try_from(v.to_string()).map_err(CaError::Rcgen);
    if s.contains("://") {
        Ok(SanType::URI(ia5(s)?))
    } else if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        Ok(SanType::IpAddress(ip))
    } else {
        Ok(SanType::DnsName(ia5(s)?))
    }
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A trust domain must be usable in a SPIFFE ID (validated like one).
fn check_trust_domain(trust_domain: &str) -> Result<(), CaError> {
    Identity::new(trust_domain, "ns", "sa")?;
    Ok(())
}

fn parse_x509<'a>(der: &'a [u8], file: &str) -> Result<X509Certificate<'a>, CaError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| CaError::BadCaFile {
            file: file.to_string(),
            reason: format!("cannot parse certificate: {e}"),
        })
}

fn signed_by(child: &X509Certificate<'_>, parent: &X509Certificate<'_>) -> bool {
    child.issuer() == parent.subject() && child.verify_signature(Some(parent.public_key())).is_ok()
}

impl Ca {
    fn ca_params(
        common_name: &str,
        trust_domain: &str,
        not_before: SystemTime,
        ttl: Duration,
    ) -> Result<CertificateParams, CaError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_offset(not_before)?;
        let not_after = not_before
            .checked_add(ttl)
            .ok_or_else(|| CaError::Lifetime(format!("{}s is out of range", ttl.as_secs())))?;
        params.not_after = to_offset(not_after)?;
        params.serial_number = Some(random_serial());
        Ok(params)
    }

    /// Generates a new self-signed root (ECDSA P-256, `CN=isthmus root CA, O=<trust domain>`,
    /// 10 years) that signs workload certificates directly.
    pub fn generate(trust_domain: &str) -> Result<Ca, CaError> {
        check_trust_domain(trust_domain)?;
        let trust_domain = trust_domain.replace('@', ".");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = Self::ca_params(
            "isthmus root CA",
            &trust_domain,
            SystemTime::now() - CLOCK_SKEW_ALLOWANCE,
            DEFAULT_ROOT_TTL,
        )?;
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let files = CaFiles {
            ca_cert_pem: cert_pem.clone(),
            ca_key_pem: key.serialize_pem(),
            root_cert_pem: cert_pem.clone(),
            cert_chain_pem: cert_pem,
        };
        tracing::info!(trust_domain = %trust_domain, "generated a new self-signed mesh root CA");
        Self::from_files(files, &trust_domain, "generated root")
    }

    /// Builds a CA from `cacerts`-style PEM material, validating it: the key must match
    /// `ca-cert.pem`, which must be a CA certificate; `cert-chain.pem` (if non-empty) must start
    /// at `ca-cert.pem` and each certificate must be signed by the next; the chain must end at a
    /// certificate in `root-cert.pem` (or be signed by one).
    pub fn from_files(files: CaFiles, trust_domain: &str, what: &str) -> Result<Ca, CaError> {
        check_trust_domain(trust_domain)?;
        let f = |name: &str| format!("{what}: {name}");
        let ca_certs = parse_certs(files.ca_cert_pem.as_bytes(), &f(CA_CERT_FILE))?;
        let ca_cert = ca_certs[0].clone();
        let roots = parse_certs(files.root_cert_pem.as_bytes(), &f(ROOT_CERT_FILE))?;
        let mut chain: Vec<CertificateDer<'static>> = if files.cert_chain_pem.trim().is_empty() {
            vec![ca_cert.clone()]
        } else {
            parse_certs(files.cert_chain_pem.as_bytes(), &f(CERT_CHAIN_FILE))?
        };
        if chain[0] != ca_cert {
            chain.insert(0, ca_cert.clone());
        }

        let key = CaKey::from_pem(files.ca_key_pem.as_bytes(), &f(CA_KEY_FILE))?;
        let parsed_ca = parse_x509(ca_cert.as_ref(), &f(CA_CERT_FILE))?;
        if parsed_ca.public_key().subject_public_key.data.as_ref()
            != rcgen::PublicKeyData::der_bytes(&key)
        {
            return Err(CaError::BadCaFile {
                file: f(CA_KEY_FILE),
                reason: format!("the key does not match {CA_CERT_FILE}"),
            });
        }
        if !parsed_ca.is_ca() {
            return Err(CaError::BadCaFile {
                file: f(CA_CERT_FILE),
                reason: "not a CA certificate (basicConstraints CA:TRUE missing)".to_string(),
            });
        }
        // Chain links.
        for pair in chain.windows(2) {
            let child = parse_x509(pair[0].as_ref(), &f(CERT_CHAIN_FILE))?;
            let parent = parse_x509(pair[1].as_ref(), &f(CERT_CHAIN_FILE))?;
            if !signed_by(&child, &parent) {
                return Err(CaError::BadCaFile {
                    file: f(CERT_CHAIN_FILE),
                    reason: format!(
                        "certificate {:?} is not signed by the next certificate {:?}",
                        child.subject().to_string(),
                        parent.subject().to_string()
                    ),
                });
            }
        }
        // Chain top must be a root or be signed by one.
        let top_der = chain.last().cloned().unwrap_or_else(|| ca_cert.clone());
        let top = parse_x509(top_der.as_ref(), &f(CERT_CHAIN_FILE))?;
        let anchored = roots.iter().any(|r| {
            *r == top_der
                || parse_x509(r.as_ref(), &f(ROOT_CERT_FILE))
                    .map(|root| signed_by(&top, &root))
                    .unwrap_or(false)
        });
        if !anchored {
            return Err(CaError::BadCaFile {
                file: f(ROOT_CERT_FILE),
                reason: format!(
                    "the signing chain ({CA_CERT_FILE} / {CERT_CHAIN_FILE}) does not lead to a certificate in {ROOT_CERT_FILE}"
                ),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&ca_cert, key)?;
        Ok(Ca {
            trust_domain: trust_domain.replace('@', "."),
            issuer,
            files,
            chain,
            workload_ttl: DEFAULT_WORKLOAD_TTL,
        })
    }

    /// Loads `cacerts` files from `dir` (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, optional
    /// `cert-chain.pem`). For a plugged-in intermediate, `cert-chain.pem` is served after each
    /// workload certificate.
    pub fn load(dir: &Path, trust_domain: &str) -> Result<Ca, CaError> {
        let read = |name: &str| -> Result<String, CaError> {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(|source| CaError::Io {
                action: "cannot read",
                path,
                source,
            })
        };
        let chain_path = dir.join(CERT_CHAIN_FILE);
        let files = CaFiles {
            ca_cert_pem: read(CA_CERT_FILE)?,
            ca_key_pem: read(CA_KEY_FILE)?,
            root_cert_pem: read(ROOT_CERT_FILE)?,
            cert_chain_pem: if chain_path.exists() {
                read(CERT_CHAIN_FILE)?
            } else {
                String::new()
            },
        };
        Self::from_files(files, trust_domain, &dir.display().to_string())
    }

    /// Loads the CA from `dir` if its files exist; otherwise generates a root and persists it
    /// there (key file mode 0600) so that restarts keep the same root. A directory with only
    /// some of the required files is an error, not a reason to overwrite anything.
    pub fn load_or_generate(dir: &Path, trust_domain: &str) -> Result<(Ca, CaOrigin), CaError> {
        let required = [CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE];
        let present: Vec<&str> = required
            .iter()
            .copied()
            .filter(|n| dir.join(n).exists())
            .collect();
        if present.len() == required.len() {
            let ca = Self::load(dir, trust_domain)?;
            tracing::info!(dir = %dir.display(), "loaded mesh CA");
            return Ok((ca, CaOrigin::Loaded));
        }
        if !present.is_empty() || dir.join(CERT_CHAIN_FILE).exists() {
            let missing: Vec<&str> = required
                .iter()
                .copied()
                .filter(|n| !present.contains(n))
                .collect();
            return Err(CaError::Incomplete {
                dir: dir.to_path_buf(),
                found: if present.is_empty() {
                    CERT_CHAIN_FILE.to_string()
                } else {
                    present.join(", ")
                },
                missing: missing.join(", "),
            });
        }
        let ca = Self::generate(trust_domain)?;
        ca.files.write(dir)?;
        tracing::info!(dir = %dir.display(), "persisted new mesh CA");
        Ok((ca, CaOrigin::Generated))
    }

    /// Sets the default workload certificate lifetime.
    pub fn with_workload_ttl(mut self, ttl: Duration) -> Result<Ca, CaError> {
        if ttl < Duration::from_secs(60) {
            return Err(CaError::Lifetime(format!(
                "{}s is too short (minimum 60s)",
                ttl.as_secs()
            )));
        }
        self.workload_ttl = ttl;
        Ok(self)
    }

    /// The default workload certificate lifetime.
    pub fn workload_ttl(&self) -> Duration {
        self.workload_ttl
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate(s) PEM (SDS `ROOTCA`).
    pub fn root_pem(&self) -> &str {
        &self.files.root_cert_pem
    }

    /// The CA files (to persist or hand to tests). Contains the private key.
    pub fn files(&self) -> &CaFiles {
        &self.files
    }

    /// The directory-layout path of a CA file.
    pub fn file_path(dir: &Path, name: &str) -> PathBuf {
        dir.join(name)
    }

    fn chain_pem(&self) -> String {
        self.chain.iter().map(|c| pem_of(c.as_ref())).collect()
    }

    /// Issues a workload certificate (SVID) for `identity` with URI SAN
    /// `spiffe://<td>/ns/<ns>/sa/<sa>`, valid from now (minus [`CLOCK_SKEW_ALLOWANCE`], or a
    /// tenth of `ttl` if smaller) until now + `ttl` (default: the CA's workload TTL).
    pub fn issue(&self, identity: &Identity, ttl: Option<Duration>) -> Result<IssuedCert, CaError> {
        let now = SystemTime::now();
        let ttl = ttl.unwrap_or(self.workload_ttl);
        // Back-date by at most a tenth of the lifetime so that very short test lifetimes do not
        // produce certificates that are already due for rotation when issued.
        let backdate = CLOCK_SKEW_ALLOWANCE.min(ttl / 10);
        let not_after = now
            .checked_add(ttl)
            .ok_or_else(|| CaError::Lifetime(format!("{}s is out of range", ttl.as_secs())))?;
        self.issue_with_validity(identity, now - backdate, not_after)
    }

    /// Issues a workload certificate with an explicit validity window (tests use this to mint
    /// expired certificates; rotation uses [`Ca::issue`]).
    pub fn issue_with_validity(
        &self,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCert, CaError> {
        let mut cert = self.issue_leaf(&LeafSpec {
            sans: vec![identity.spiffe_uri()],
            common_name: None,
            not_before,
            not_after,
        })?;
        cert.identity = Some(identity.clone());
        Ok(cert)
    }

    /// Issues an arbitrary leaf (server/client) certificate: ECDSA P-256 key, serverAuth and
    /// clientAuth EKUs, random serial, `CA:FALSE`.
    pub fn issue_leaf(&self, spec: &LeafSpec) -> Result<IssuedCert, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut cert = self.sign_leaf(spec, &key)?;
        cert.key_pem = key.serialize_pem();
        Ok(cert)
    }

    /// Signs a leaf for `public_key` (the returned `key_pem` is empty).
    fn sign_leaf(
        &self,
        spec: &LeafSpec,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<IssuedCert, CaError> {
        if spec.not_after <= spec.not_before {
            return Err(CaError::Lifetime(
                "notAfter must be after notBefore".to_string(),
            ));
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(cn) = &spec.common_name {
            dn.push(DnType::CommonName, cn.as_str());
        }
        params.distinguished_name = dn;
        params.subject_alt_names = spec
            .sans
            .iter()
            .map(|s| classify_san(s))
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_offset(spec.not_before)?;
        params.not_after = to_offset(spec.not_after)?;
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(public_key, &self.issuer)?;
        let summary = CertSummary::from_der(cert.der().as_ref())?;
        let mut chain_pem = cert.pem();
        chain_pem.push_str(&self.chain_pem());
        Ok(IssuedCert {
            cert_chain_pem: chain_pem,
            key_pem: String::new(),
            root_pem: self.files.root_cert_pem.clone(),
            serial_hex: summary.serial_hex,
            not_before: from_unix(summary.not_before_unix),
            not_after: from_unix(summary.not_after_unix),
            identity: None,
        })
    }

    /// Signs a workload certificate for a PEM CSR, so that the private key never leaves the
    /// proxy (Istio's agent flow). The CSR's signature is verified (proof of possession), but
    /// nothing else from it is used: subject and SANs come from `identity` alone, which the
    /// caller must have authenticated (see [`crate::CaService::sign_csr_for_token`]). The
    /// returned `key_pem` is empty.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Option<Duration>,
    ) -> Result<IssuedCert, CaError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::Csr(e.to_string()))?;
        let now = SystemTime::now();
        let ttl = ttl.unwrap_or(self.workload_ttl);
        let backdate = CLOCK_SKEW_ALLOWANCE.min(ttl / 10);
        let not_after = now
            .checked_add(ttl)
            .ok_or_else(|| CaError::Lifetime(format!("{}s is out of range", ttl.as_secs())))?;
        let mut cert = self.sign_leaf(
            &LeafSpec {
                sans: vec![identity.spiffe_uri()],
                common_name: None,
                not_before: now - backdate,
                not_after,
            },
            &csr.public_key,
        )?;
        cert.identity = Some(identity.clone());
        Ok(cert)
    }

    /// Signs a PEM CRL (`X509 CRL`) revoking the given serials (lowercase or uppercase hex, as
    /// in [`IssuedCert::serial_hex`]), valid from now for `validity`. Use it for a secret's
    /// `ca.crl` when this CA also issues client certificates.
    pub fn issue_crl(
        &self,
        revoked_serials_hex: &[&str],
        validity: Duration,
    ) -> Result<String, CaError> {
        let now = to_offset(SystemTime::now())?;
        let next = to_offset(
            SystemTime::now()
                .checked_add(validity)
                .ok_or_else(|| CaError::Lifetime("CRL validity out of range".to_string()))?,
        )?;
        let mut revoked = Vec::new();
        for serial in revoked_serials_hex {
            let bytes = hex::decode(serial).map_err(|e| CaError::BadCaFile {
                file: "CRL".to_string(),
                reason: format!("serial {serial:?} is not hex: {e}"),
            })?;
            revoked.push(rcgen::RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            });
        }
        let mut crl_number = [0u8; 8];
        rand::rng().fill_bytes(&mut crl_number);
        crl_number[0] &= 0x7f;
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: next,
            crl_number: SerialNumber::from_slice(&crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// The root(s) as a rustls trust bundle (SDS `ROOTCA`).
    pub fn trust_bundle(&self) -> Result<isthmus_tls::TrustBundle, CaError> {
        Ok(isthmus_tls::TrustBundle::from_pem(
            self.files.root_cert_pem.as_bytes(),
            "ROOTCA",
        )?)
    }

    /// Creates an intermediate CA signed by this CA and returns it in `cacerts` layout (for
    /// multi-cluster set-ups and tests of plugged-in certificates).
    pub fn issue_intermediate(&self, common_name: &str, ttl: Duration) -> Result<CaFiles, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = Self::ca_params(
            common_name,
            &self.trust_domain,
            SystemTime::now() - CLOCK_SKEW_ALLOWANCE,
            ttl,
        )?;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        let cert_pem = cert.pem();
        let mut chain = cert_pem.clone();
        chain.push_str(&self.chain_pem());
        Ok(CaFiles {
            ca_cert_pem: cert_pem,
            ca_key_pem: key.serialize_pem(),
            root_cert_pem: self.files.root_cert_pem.clone(),
            cert_chain_pem: chain,
        })
    }
}

/// Re-encodes DER certificates as PEM (helper for callers holding DER).
pub fn certs_to_pem(certs: &[CertificateDer<'_>]) -> String {
    certs.iter().map(|c| pem_of(c.as_ref())).collect()
}

/// Parses PEM certificates into DER (thin wrapper kept for symmetry with [`certs_to_pem`]).
pub fn pem_to_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

/// Creates an ECDSA P-256 key and a CSR for `identity` (URI SAN, empty subject), as a proxy
/// does before asking the CA to sign. Returns `(csr_pem, key_pem)`.
pub fn generate_csr(identity: &Identity) -> Result<(String, String), CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![classify_san(&identity.spiffe_uri())?];
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}
