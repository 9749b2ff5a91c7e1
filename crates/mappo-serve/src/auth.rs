//! API keys: read from a file, compared in constant time.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The accepted API keys, kept as sha256 digests: comparing fixed-size digests in constant time
/// leaks neither a key's bytes nor its length.
#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys").field("keys", &self.digests.len()).finish()
    }
}

impl ApiKeys {
    /// Reads keys from a file: one per line, surrounding whitespace trimmed, blank lines and
    /// lines starting with `#` ignored. A file with no key is an error (it would lock everyone
    /// out, or, worse, be mistaken for "no authentication").
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let keys = Self::parse(&text);
        if keys.is_empty() {
            return Err(format!("{} holds no API key (one per line)", path.display()));
        }
        Ok(keys)
    }

    /// Keys from text, one per line (see [`ApiKeys::from_file`]).
    pub fn parse(text: &str) -> Self {
        let digests = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|k| Sha256::digest(k.as_bytes()).into())
            .collect();
        Self { digests }
    }

    /// No key configured.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether an `Authorization` header value carries one of the keys: `Bearer KEY`, or HTTP
    /// Basic with the key as the password (any user name) — what a browser sends for `/ui`.
    /// Every key is compared, in constant time, whatever matched.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else { return false };
        let basic = strip_scheme(value, b"basic ").and_then(basic_password);
        let Some(key) = strip_scheme(value, b"bearer ").map(<[u8]>::to_vec).or(basic) else {
            return false;
        };
        let d: [u8; 32] = Sha256::digest(&key).into();
        let mut ok = subtle::Choice::from(0u8);
        for k in &self.digests {
            ok |= k.ct_eq(&d);
        }
        bool::from(ok)
    }
}

/// The password of HTTP Basic credentials (`base64(user:password)`), trimmed like a key.
fn basic_password(encoded: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    let password = decoded.get(colon + 1..)?;
    let text = std::str::from_utf8(password).ok()?.trim();
    (!text.is_empty()).then(|| text.as_bytes().to_vec())
}

/// The credentials after `scheme` (case-insensitive, with its trailing space), trimmed.
fn strip_scheme<'a>(v: &'a [u8], scheme: &[u8]) -> Option<&'a [u8]> {
    let (given, rest) = (v.get(..scheme.len())?, v.get(scheme.len()..)?);
    if !given.eq_ignore_ascii_case(scheme) {
        return None;
    }
    let start = rest.iter().position(|b| *b != b' ')?;
    let end = rest.iter().rposition(|b| *b != b' ')? + 1;
    Some(&rest[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_keys_match_exactly() {
        let keys = ApiKeys::parse("# team keys\n\n  alpha-key \nbeta\n");
        assert!(!keys.is_empty());
        assert!(keys.allows(Some(b"Bearer alpha-key")));
        assert!(keys.allows(Some(b"bearer beta")));
        assert!(!keys.allows(Some(b"Bearer alpha")));
        assert!(!keys.allows(Some(b"Bearer alpha-key2")));
        assert!(!keys.allows(Some(b"Basic alpha-key")));
        assert!(!keys.allows(Some(b"Bearer ")));
        assert!(!keys.allows(Some(b"alpha-key")));
        assert!(!keys.allows(None));
        assert!(!keys.allows(Some(b"Bearer # team keys")));
    }

    #[test]
    fn basic_credentials_carry_the_key_as_password() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let keys = ApiKeys::parse("alpha-key\n");
        assert!(keys.allows(Some(format!("Basic {}", b64("anyone:alpha-key")).as_bytes())));
        assert!(keys.allows(Some(format!("basic {}", b64(":alpha-key")).as_bytes())));
        assert!(!keys.allows(Some(format!("Basic {}", b64("alpha-key:")).as_bytes())));
        assert!(!keys.allows(Some(format!("Basic {}", b64("alpha-key")).as_bytes())));
        assert!(!keys.allows(Some(format!("Basic {}", b64("u:alpha")).as_bytes())));
        assert!(!keys.allows(Some(b"Basic !!not base64!!")));
        assert!(!keys.allows(Some(b"Basic ")));
    }

    #[test]
    fn a_file_without_keys_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("keys");
        std::fs::write(&p, "# nothing\n\n").expect("write");
        assert!(ApiKeys::from_file(&p).expect_err("empty").contains("no API key"));
        assert!(ApiKeys::from_file(&dir.path().join("missing")).is_err());
    }
}
