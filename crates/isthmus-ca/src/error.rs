//! Errors of the CA.

use std::io;
use std::path::PathBuf;

use isthmus_tls::{IdentityError, TlsError};

/// Errors from CA set-up, loading and issuance.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A CA file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// `cannot read` / `cannot write` / ...
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// Some but not all `cacerts` files are present.
    #[error(
        "incomplete CA directory {dir}: found {found} but not {missing}; supply ca-cert.pem, ca-key.pem and root-cert.pem (cert-chain.pem optional), or none of them to let isthmus generate a root"
    )]
    Incomplete {
        /// The directory.
        dir: PathBuf,
        /// Files found.
        found: String,
        /// Files missing.
        missing: String,
    },
    /// A CA file is unusable.
    #[error("{file}: {reason}")]
    BadCaFile {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// PEM/certificate/key problems.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A bad identity.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// rcgen refused to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A certificate signing request could not be parsed or its signature is invalid.
    #[error("invalid certificate signing request: {0}")]
    Csr(String),
    /// A lifetime was zero, negative or absurd.
    #[error("invalid certificate lifetime: {0}")]
    Lifetime(String),
}

/// Errors from the authenticated issuance API.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The presented token is not registered.
    #[error("unknown proxy credential: no identity is registered for this token (was the proxy registered by the supervisor?)")]
    UnknownToken,
    /// A token is already bound to a different identity.
    #[error("proxy token is already bound to {existing}; refusing to rebind it to {requested}")]
    TokenBound {
        /// The identity the token has.
        existing: String,
        /// The identity that was asked for.
        requested: String,
    },
    /// The identity is not in the CA's trust domain.
    #[error("identity {identity} is outside the CA's trust domain {trust_domain}")]
    WrongTrustDomain {
        /// The identity.
        identity: String,
        /// The CA's trust domain.
        trust_domain: String,
    },
    /// A token that is too short to be a credential.
    #[error("proxy token too short ({0} bytes; at least 16 required)")]
    WeakToken(usize),
    /// Issuance itself failed.
    #[error(transparent)]
    Ca(#[from] CaError),
}
