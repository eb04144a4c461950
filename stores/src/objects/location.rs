//! Where objects live: [`ObjectStoreUrl`] (a local folder or an S3 bucket) and the S3
//! credentials, which come from the environment and never appear in `Debug` or in errors.

use std::fmt;
use std::path::PathBuf;

use url::Url;

use super::ObjectError;

/// The configured object store, parsed from a URL:
///
/// - `file:///abs/path` or a plain path (`./data/objects`): a local folder, created if missing.
/// - `s3://bucket?endpoint=https://ACCOUNT.r2.cloudflarestorage.com&region=auto`: an S3 API
///   bucket (Cloudflare R2, MinIO, AWS). `endpoint` is optional (AWS itself); `region` defaults
///   to `auto` with an endpoint (what R2 expects) and `us-east-1` without. An `http://` endpoint
///   is allowed (loopback test servers); credentials are never part of the URL.
#[derive(Clone, PartialEq, Eq)]
pub enum ObjectStoreUrl {
    /// A local folder (absolute after parsing).
    Local(PathBuf),
    /// An S3-compatible bucket.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Endpoint URL, without a trailing `/`; `None` for AWS S3 itself.
        endpoint: Option<String>,
        /// Signing region.
        region: String,
    },
}

impl ObjectStoreUrl {
    /// Parses a URL or a plain path (see the type's docs).
    pub fn parse(raw: &str) -> Result<Self, ObjectError> {
        let invalid = |reason: String| ObjectError::InvalidUrl {
            url: redact(raw),
            reason,
        };
        if let Some(rest) = raw.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(invalid(
                    "file:// URLs need an absolute path: file:///abs/path".into(),
                ));
            }
            return Ok(ObjectStoreUrl::Local(PathBuf::from(rest)));
        }
        if !raw.starts_with("s3://") {
            if raw.is_empty() || raw.contains("://") {
                return Err(invalid(
                    "use file:///abs/path, a folder path, or s3://bucket?endpoint=…".into(),
                ));
            }
            let path = PathBuf::from(raw);
            let path = if path.is_absolute() {
                path
            } else {
                std::env::current_dir()
                    .map_err(|e| invalid(format!("cannot resolve a relative path: {e}")))?
                    .join(path)
            };
            return Ok(ObjectStoreUrl::Local(path));
        }
        let url = Url::parse(raw).map_err(|e| invalid(e.to_string()))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "credentials do not belong in the URL: set COGNOMEGA_S3_ACCESS_KEY_ID and COGNOMEGA_S3_SECRET_ACCESS_KEY".into(),
            ));
        }
        let bucket = url.host_str().unwrap_or_default().to_owned();
        if bucket.is_empty() {
            return Err(invalid("missing bucket: s3://BUCKET?endpoint=…".into()));
        }
        if !matches!(url.path(), "" | "/") {
            return Err(invalid(
                "a key prefix after the bucket is not supported".into(),
            ));
        }
        let mut endpoint = None;
        let mut region = None;
        for (name, value) in url.query_pairs() {
            match name.as_ref() {
                "endpoint" => {
                    let parsed =
                        Url::parse(&value).map_err(|e| invalid(format!("endpoint: {e}")))?;
                    if !matches!(parsed.scheme(), "http" | "https") {
                        return Err(invalid("endpoint must be http:// or https://".into()));
                    }
                    endpoint = Some(value.trim_end_matches('/').to_owned());
                }
                "region" => region = Some(value.into_owned()),
                other => {
                    return Err(invalid(format!(
                        "unknown parameter {other:?} (endpoint, region)"
                    )))
                }
            }
        }
        let region = region.unwrap_or_else(|| {
            if endpoint.is_some() {
                "auto"
            } else {
                "us-east-1"
            }
            .to_owned()
        });
        Ok(ObjectStoreUrl::S3 {
            bucket,
            endpoint,
            region,
        })
    }
}

impl fmt::Display for ObjectStoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectStoreUrl::Local(path) => write!(f, "file://{}", path.display()),
            ObjectStoreUrl::S3 {
                bucket,
                endpoint,
                region,
            } => {
                write!(f, "s3://{bucket}?")?;
                if let Some(endpoint) = endpoint {
                    write!(f, "endpoint={endpoint}&")?;
                }
                write!(f, "region={region}")
            }
        }
    }
}

impl fmt::Debug for ObjectStoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectStoreUrl({self})")
    }
}

/// Keeps whatever sits between `scheme://` and `@` out of error messages.
fn redact(raw: &str) -> String {
    match (raw.find("://"), raw.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://<redacted>{}", &raw[..scheme], &raw[at..])
        }
        _ => raw.to_owned(),
    }
}

/// S3 access keys. `Debug` shows the key id (it appears in every request anyway) but never the
/// secret.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// The access key id.
    pub access_key_id: String,
    secret_access_key: String,
}

impl S3Credentials {
    /// Credentials from explicit values.
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        S3Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
        }
    }

    /// `COGNOMEGA_S3_ACCESS_KEY_ID` / `COGNOMEGA_S3_SECRET_ACCESS_KEY`, else the standard
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`; each pair is taken whole, never mixed.
    pub fn from_env() -> Result<Self, ObjectError> {
        let pair = |id: &str, secret: &str| {
            let id = std::env::var(id).ok().filter(|v| !v.is_empty())?;
            let secret = std::env::var(secret).ok().filter(|v| !v.is_empty())?;
            Some(S3Credentials::new(id, secret))
        };
        pair(
            "COGNOMEGA_S3_ACCESS_KEY_ID",
            "COGNOMEGA_S3_SECRET_ACCESS_KEY",
        )
        .or_else(|| pair("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
        .ok_or(ObjectError::MissingCredentials)
    }

    /// The secret: only for handing to the S3 client.
    pub fn expose_secret(&self) -> &str {
        &self.secret_access_key
    }
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn local_folders_parse_from_file_urls_and_paths() {
        assert_eq!(
            ObjectStoreUrl::parse("file:///var/lib/cognomega/objects").unwrap(),
            ObjectStoreUrl::Local("/var/lib/cognomega/objects".into())
        );
        assert_eq!(
            ObjectStoreUrl::parse("/srv/objects").unwrap(),
            ObjectStoreUrl::Local("/srv/objects".into())
        );
        match ObjectStoreUrl::parse("data/objects").unwrap() {
            ObjectStoreUrl::Local(path) => {
                assert!(path.is_absolute() && path.ends_with("data/objects"))
            }
            other => panic!("{other:?}"),
        }
        assert!(ObjectStoreUrl::parse("file://relative/path").is_err());
        assert!(ObjectStoreUrl::parse("").is_err());
        assert!(ObjectStoreUrl::parse("gs://bucket").is_err());
    }

    #[test]
    fn s3_urls_parse_with_defaults() {
        let url = ObjectStoreUrl::parse(
            "s3://artifacts?endpoint=https://acct.r2.cloudflarestorage.com/&region=auto",
        )
        .unwrap();
        assert_eq!(
            url,
            ObjectStoreUrl::S3 {
                bucket: "artifacts".into(),
                endpoint: Some("https://acct.r2.cloudflarestorage.com".into()),
                region: "auto".into(),
            }
        );
        assert_eq!(
            url.to_string(),
            "s3://artifacts?endpoint=https://acct.r2.cloudflarestorage.com&region=auto"
        );
        let aws = ObjectStoreUrl::parse("s3://b").unwrap();
        assert_eq!(aws.to_string(), "s3://b?region=us-east-1");
        let local = ObjectStoreUrl::parse("s3://b?endpoint=http%3A%2F%2F127.0.0.1%3A9000").unwrap();
        assert_eq!(
            local.to_string(),
            "s3://b?endpoint=http://127.0.0.1:9000&region=auto"
        );
    }

    #[test]
    fn bad_s3_urls_are_refused_without_echoing_secrets() {
        let err = ObjectStoreUrl::parse("s3://AKID:s3cr3t@bucket")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cr3t") && !err.contains("AKID"), "{err}");
        assert!(ObjectStoreUrl::parse("s3://?endpoint=http://x").is_err());
        assert!(ObjectStoreUrl::parse("s3://b/prefix").is_err());
        assert!(ObjectStoreUrl::parse("s3://b?endpoint=ftp://x").is_err());
        assert!(ObjectStoreUrl::parse("s3://b?bogus=1").is_err());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let creds = S3Credentials::new("AKID", "very-secret");
        let shown = format!("{creds:?}");
        assert!(
            shown.contains("AKID") && !shown.contains("very-secret"),
            "{shown}"
        );
    }
}
