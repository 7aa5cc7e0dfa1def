//! Wire messages: one JSON object per line.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// A line longer than this is a protocol error (protects both sides from unbounded buffering).
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// What is distributed. Config and secrets are versioned independently, as Envoy's LDS/CDS and
/// SDS streams are, so a certificate rotation does not re-push listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Config,
    Secrets,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 2] = [ResourceKind::Config, ResourceKind::Secrets];
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Hello {
        token: String,
    },
    Ack {
        kind: ResourceKind,
        version: u64,
    },
    Nack {
        kind: ResourceKind,
        version: u64,
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Welcome {
        proxy: String,
    },
    Push {
        kind: ResourceKind,
        version: u64,
        body: serde_json::Value,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("message longer than {MAX_LINE_BYTES} bytes")]
    TooLong,
    #[error("malformed message: {0}")]
    Malformed(String),
}

pub(crate) async fn write_msg<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), WireError> {
    let mut line = serde_json::to_vec(msg).map_err(|e| WireError::Malformed(e.to_string()))?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await?;
    Ok(())
}

pub(crate) async fn read_msg<R: AsyncBufRead + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<T, WireError> {
    buf.clear();
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Err(WireError::Closed);
        }
        if let Some(i) = available.iter().position(|b| *b == b'\n') {
            buf.extend_from_slice(&available[..i]);
            r.consume(i + 1);
            break;
        }
        let n = available.len();
        buf.extend_from_slice(available);
        r.consume(n);
        if buf.len() > MAX_LINE_BYTES {
            return Err(WireError::TooLong);
        }
    }
    if buf.len() > MAX_LINE_BYTES {
        return Err(WireError::TooLong);
    }
    serde_json::from_slice(buf).map_err(|e| WireError::Malformed(e.to_string()))
}
