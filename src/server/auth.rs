//! The bearer token every `dualsight.v1` request must carry when the daemon
//! has one (`--token-file`). Only its blake3 digest is kept, and requests are
//! compared digest to digest: `blake3::Hash` equality is constant-time, and
//! hashing first hides the token's length too. The token never reaches a log:
//! this type has no `Display` and its `Debug` shows nothing.

use std::fmt;
use std::path::{Path, PathBuf};

use tonic::codegen::http::HeaderValue;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{}: cannot read the token file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: &'static str },
}

/// Longest token accepted; a token file is a secret, not a data file.
const MAX_TOKEN_BYTES: u64 = 4096;

#[derive(Clone)]
pub struct Token(blake3::Hash);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// The token in `path` (see [`read_token`]).
    pub fn from_file(path: &Path) -> Result<Self, AuthError> {
        Ok(Self::new(read_token(path)?.as_bytes()))
    }

    pub fn new(token: &[u8]) -> Self {
        Self(blake3::hash(token))
    }

    /// Whether an `authorization` header value is `Bearer <this token>`.
    pub fn accepts(&self, header: Option<&HeaderValue>) -> bool {
        let Some(value) = header else { return false };
        let value = value.as_bytes();
        let Some(presented) = value
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|_| value[7..].trim_ascii())
        else {
            return false;
        };
        // Constant-time digest comparison (blake3::Hash's PartialEq).
        blake3::hash(presented) == self.0
    }
}

/// The token in `path`: one line of visible ASCII (surrounding whitespace and
/// the final newline are ignored), as an HTTP header value must be. The
/// daemon and the CLI client read token files alike.
pub fn read_token(path: &Path) -> Result<String, AuthError> {
    let invalid = |reason| AuthError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let read = |source| AuthError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_TOKEN_BYTES {
        return Err(invalid(
            "the token file is over 4096 bytes: expected one line holding the token",
        ));
    }
    let bytes = std::fs::read(path).map_err(read)?;
    let token = bytes.trim_ascii();
    if token.is_empty() {
        return Err(invalid("the token file is empty: expected the token"));
    }
    if !token.iter().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "the token must be one line of visible ASCII characters (no spaces)",
        ));
    }
    Ok(String::from_utf8(token.to_vec()).expect("visible ASCII is UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_bearer_token() {
        let t = Token::new(b"s3cret-token");
        let h = |s: &'static str| HeaderValue::from_static(s);
        assert!(t.accepts(Some(&h("Bearer s3cret-token"))));
        assert!(t.accepts(Some(&h("bearer s3cret-token"))));
        assert!(!t.accepts(Some(&h("Bearer s3cret-toke"))));
        assert!(!t.accepts(Some(&h("Basic s3cret-token"))));
        assert!(!t.accepts(Some(&h("s3cret-token"))));
        assert!(!t.accepts(None));
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }

    #[test]
    fn a_token_file_is_one_line_of_visible_ascii() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "abc123\n").unwrap();
        let t = Token::from_file(&p).unwrap();
        assert!(t.accepts(Some(&HeaderValue::from_static("Bearer abc123"))));
        std::fs::write(&p, "\n").unwrap();
        let e = Token::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("token") && e.contains("empty"), "{e}");
        std::fs::write(&p, "two words").unwrap();
        let e = Token::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("visible ASCII"), "{e}");
        let e = Token::from_file(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
