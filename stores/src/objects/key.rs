//! [`ObjectKey`]: the only way to name an object. Keys are built by the platform from ids and
//! fixed segments (`jobs/<id>/artifacts/index.html`), never from raw user input, and this type
//! refuses anything that could escape a prefix or mean different things on different backends.

use std::fmt;
use std::str::FromStr;

use object_store::path::Path;
use serde::{Deserialize, Serialize};

/// A validated object key: 1..=1024 bytes of `/`-separated segments, each made of ASCII letters,
/// digits and `.` `_` `-` `=` (the last for `dt=2024-05-01` style export partitions), with no
/// empty, `.` or `..` segment and no leading or trailing `/`.
///
/// That alphabet is a strict subset of what every backend stores verbatim: object_store's
/// [`Path`] never percent-encodes it, S3 and R2 list it in their "safe" set, and it names the
/// same file on the local folder, so a key round-trips unchanged through put, list and get.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ObjectKey(String);

/// Why a string is not an [`ObjectKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid object key {shown}: {reason}")]
pub struct InvalidObjectKey {
    /// The offending key, escaped and cut to 80 characters (it may hold control characters).
    pub shown: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl ObjectKey {
    /// The longest key S3 accepts, in bytes.
    pub const MAX_LEN: usize = 1024;

    /// Checks `raw` against the rules above.
    pub fn parse(raw: &str) -> Result<Self, InvalidObjectKey> {
        check(raw).map_err(|reason| InvalidObjectKey {
            shown: format!("{:?}", raw.chars().take(80).collect::<String>()),
            reason,
        })?;
        Ok(ObjectKey(raw.to_owned()))
    }

    /// This key with `segments` (one or more `/`-separated segments) appended.
    pub fn join(&self, segments: &str) -> Result<Self, InvalidObjectKey> {
        ObjectKey::parse(&format!("{}/{segments}", self.0))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last segment (the "file name").
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// True if `self` is `prefix` or lies under it, segment by segment (`a/b` is under `a` but
    /// not under `a/b-c`), the way [`Objects::list`](crate::objects::Objects::list) filters.
    pub fn starts_with(&self, prefix: &ObjectKey) -> bool {
        self.0 == prefix.0
            || (self.0.starts_with(&prefix.0)
                && self.0.as_bytes().get(prefix.0.len()) == Some(&b'/'))
    }

    pub(crate) fn to_path(&self) -> Path {
        // Infallible for every key `check` accepts: its alphabet has nothing Path encodes.
        Path::from_iter(self.0.split('/'))
    }
}

fn check(raw: &str) -> Result<(), &'static str> {
    if raw.is_empty() {
        return Err("it is empty");
    }
    if raw.len() > ObjectKey::MAX_LEN {
        return Err("it is longer than 1024 bytes");
    }
    if raw.starts_with('/') {
        return Err("it starts with '/'");
    }
    for segment in raw.split('/') {
        match segment {
            "" => return Err("it has an empty segment ('//' or a trailing '/')"),
            "." | ".." => return Err("it has a '.' or '..' segment"),
            _ => {}
        }
        if let Some(bad) = segment.bytes().find(|b| !allowed(*b)) {
            return Err(if bad.is_ascii_control() {
                "it contains a control character"
            } else if bad.is_ascii() {
                "it contains a character outside A-Z a-z 0-9 . _ - = /"
            } else {
                "it contains a non-ASCII character"
            });
        }
    }
    Ok(())
}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'=')
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectKey({})", self.0)
    }
}

impl FromStr for ObjectKey {
    type Err = InvalidObjectKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ObjectKey::parse(s)
    }
}

impl TryFrom<String> for ObjectKey {
    type Error = InvalidObjectKey;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        check(&s).map_err(|reason| InvalidObjectKey {
            shown: format!("{:?}", s.chars().take(80).collect::<String>()),
            reason,
        })?;
        Ok(ObjectKey(s))
    }
}

impl From<ObjectKey> for String {
    fn from(key: ObjectKey) -> Self {
        key.0
    }
}

impl AsRef<str> for ObjectKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn platform_keys_are_accepted_and_map_to_the_same_path() {
        for raw in [
            "jobs/01J9Z/artifacts/index.html",
            "exports/usage/dt=2024-05-01/part-0000.ndjson.zst",
            "_quarantine/uploads/a_b-c.d",
            "x",
            ".well-known",
        ] {
            let key = ObjectKey::parse(raw).unwrap();
            assert_eq!(key.as_str(), raw);
            assert_eq!(key.to_path().as_ref(), raw);
            assert_eq!(Path::parse(raw).unwrap(), key.to_path());
        }
    }

    #[test]
    fn escapes_and_ambiguities_are_refused() {
        let long = "a".repeat(1025);
        for (raw, why) in [
            ("", "empty"),
            ("/abs/key", "starts with"),
            ("a//b", "empty segment"),
            ("a/b/", "empty segment"),
            ("a/../b", "'..'"),
            ("./a", "'.'"),
            ("..", "'..'"),
            ("a/b\nc", "control"),
            ("a\u{0}b", "control"),
            ("a b", "outside"),
            ("a%2Fb", "outside"),
            ("a#1", "outside"),
            ("a\\b", "outside"),
            ("caf\u{e9}", "non-ASCII"),
            (long.as_str(), "1024"),
        ] {
            let err = ObjectKey::parse(raw).unwrap_err();
            assert!(err.reason.contains(why), "{raw:?}: {err}");
        }
        assert!(ObjectKey::parse(&"a".repeat(1024)).is_ok());
    }

    #[test]
    fn join_and_prefixes_work_by_segment() {
        let base = ObjectKey::parse("jobs/42").unwrap();
        let file = base.join("artifacts/app.css").unwrap();
        assert_eq!(file.as_str(), "jobs/42/artifacts/app.css");
        assert_eq!(file.file_name(), "app.css");
        assert!(file.starts_with(&base));
        assert!(base.starts_with(&base));
        assert!(!ObjectKey::parse("jobs/420/x").unwrap().starts_with(&base));
        assert!(base.join("../escape").is_err());
        assert!(base.join("").is_err());
    }

    #[test]
    fn serde_validates() {
        let key: ObjectKey = serde_json::from_str("\"a/b\"").unwrap();
        assert_eq!(key.as_str(), "a/b");
        assert!(serde_json::from_str::<ObjectKey>("\"../etc/passwd\"").is_err());
        assert_eq!(serde_json::to_string(&key).unwrap(), "\"a/b\"");
    }
}
