//! The URL a trace starts from: curl's view of it (scheme decides default port, TLS and HTTP).

/// A parsed request URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedUrl {
    /// `http`, `https`, `tcp` or `tls`.
    pub scheme: String,
    pub host: String,
    pub port: u32,
    pub path: String,
    /// The application itself speaks TLS.
    pub tls: bool,
    /// The payload is HTTP.
    pub http: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("URL {0:?} has no scheme: write http://HOST[:PORT]/PATH, https://..., tcp://HOST:PORT or tls://HOST:PORT")]
    NoScheme(String),
    #[error("URL scheme {0:?} is not supported: use http, https, tcp or tls")]
    Scheme(String),
    #[error("URL {0:?} has no host")]
    NoHost(String),
    #[error("URL {0:?}: port {1:?} is not a number in 1..65535")]
    Port(String, String),
    #[error("URL {0:?}: tcp:// and tls:// need an explicit port")]
    NeedPort(String),
}

/// Parses `scheme://host[:port][/path][?query]`.
pub fn parse_url(url: &str) -> Result<ParsedUrl, UrlError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| UrlError::NoScheme(url.to_string()))?;
    let scheme = scheme.to_ascii_lowercase();
    let (tls, http, default_port) = match scheme.as_str() {
        "http" => (false, true, Some(80)),
        "https" => (true, true, Some(443)),
        "tcp" => (false, false, None),
        "tls" => (true, false, None),
        _ => return Err(UrlError::Scheme(scheme)),
    };
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let authority = authority
        .rsplit_once('@')
        .map(|(_, a)| a)
        .unwrap_or(authority);
    let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
        match stripped.split_once(']') {
            Some((h, after)) => (h.to_string(), after.strip_prefix(':')),
            None => return Err(UrlError::NoHost(url.to_string())),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::NoHost(url.to_string()));
    }
    let port = match port {
        Some(p) => p
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=65535).contains(n))
            .ok_or_else(|| UrlError::Port(url.to_string(), p.to_string()))?,
        None => default_port.ok_or_else(|| UrlError::NeedPort(url.to_string()))?,
    };
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Ok(ParsedUrl {
        scheme,
        host: host.to_ascii_lowercase(),
        port,
        path,
        tls,
        http,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_curl_style_urls() {
        let u = parse_url("http://api.partner.example.com/get?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str(), u.tls, u.http),
            ("api.partner.example.com", 80, "/get?x=1", false, true)
        );
        let u = parse_url("https://API.partner.example").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str(), u.tls),
            ("api.partner.example", 443, "/", true)
        );
        let u = parse_url("tls://db.example:5432").unwrap();
        assert_eq!((u.port, u.tls, u.http), (5432, true, false));
        let u = parse_url("http://[2001:db8::1]:8080/x").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("2001:db8::1", 8080));
        assert!(matches!(
            parse_url("api.example"),
            Err(UrlError::NoScheme(_))
        ));
        assert!(matches!(parse_url("ftp://x"), Err(UrlError::Scheme(_))));
        assert!(matches!(parse_url("tcp://x"), Err(UrlError::NeedPort(_))));
        assert!(matches!(
            parse_url("http://x:99999/"),
            Err(UrlError::Port(_, _))
        ));
        assert!(matches!(parse_url("http:///"), Err(UrlError::NoHost(_))));
    }
}
