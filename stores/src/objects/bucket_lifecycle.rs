//! `PutBucketLifecycleConfiguration` (`PUT /{bucket}?lifecycle`): the one bucket-level call the
//! platform makes, which object_store does not. The request is signed with object_store's own
//! SigV4 signer ([`AwsAuthorizer`]) and sent with its HTTP client, so it shares the TLS setup
//! and credentials handling of every other S3 request.

use base64::Engine as _;
use bytes::Bytes;
use md5::{Digest, Md5};
use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::{HttpConnector, HttpRequestBody, ReqwestConnector};
use object_store::ClientOptions;

use super::{Backend, ObjectStoreUrl, Objects};

/// What applying a bucket lifecycle configuration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleApplied {
    /// The provider accepted it (HTTP 2xx).
    Applied {
        /// The status it answered with.
        status: u16,
        /// The URL it was sent to (no credentials in it).
        url: String,
    },
    /// A local folder has no provider: the sweeper enforces the whole policy.
    LocalFolder,
}

/// Why the configuration was not applied.
#[derive(Debug, thiserror::Error)]
pub enum BucketLifecycleError {
    /// The provider answered with an error (S3's `<Error><Code>…` body).
    #[error("the provider refused the lifecycle configuration: HTTP {status}{}{}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default(), message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Refused {
        /// HTTP status.
        status: u16,
        /// S3 error code (`NotImplemented`, `MalformedXML`, `AccessDenied`, …).
        code: Option<String>,
        /// The provider's message.
        message: Option<String>,
    },
    /// The request could not be built, signed or sent.
    #[error("cannot send the lifecycle configuration to {url}: {reason}")]
    Request {
        /// Where it was going.
        url: String,
        /// Why.
        reason: String,
    },
}

/// The URL of `PUT ?lifecycle` for a bucket: path style under the configured endpoint (R2 and
/// S3-compatible servers), or AWS S3's regional endpoint.
pub(crate) fn lifecycle_url(url: &ObjectStoreUrl) -> Option<String> {
    match url {
        ObjectStoreUrl::Local(_) => None,
        ObjectStoreUrl::S3 {
            bucket,
            endpoint: Some(endpoint),
            ..
        } => Some(format!("{endpoint}/{bucket}?lifecycle")),
        ObjectStoreUrl::S3 {
            bucket,
            endpoint: None,
            region,
        } => Some(format!(
            "https://s3.{region}.amazonaws.com/{bucket}?lifecycle"
        )),
    }
}

impl Objects {
    /// Replaces the bucket's lifecycle configuration with `xml` (a `LifecycleConfiguration`
    /// document). S3 requires an integrity header on this call: `Content-MD5` is sent (the one
    /// every S3 API, R2 included, accepts), and the payload's SHA-256 is part of the signature.
    /// On the local folder nothing is sent: [`LifecycleApplied::LocalFolder`].
    pub async fn put_bucket_lifecycle(
        &self,
        xml: &str,
    ) -> Result<LifecycleApplied, BucketLifecycleError> {
        let Backend::S3 {
            url, credentials, ..
        } = &*self.backend
        else {
            return Ok(LifecycleApplied::LocalFolder);
        };
        let ObjectStoreUrl::S3 {
            endpoint, region, ..
        } = url
        else {
            return Ok(LifecycleApplied::LocalFolder);
        };
        let target = lifecycle_url(url).unwrap_or_default();
        let failed = |reason: String| BucketLifecycleError::Request {
            url: target.clone(),
            reason,
        };
        let body = Bytes::from(xml.to_owned());
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&body));
        let mut request = http::Request::builder()
            .method(http::Method::PUT)
            .uri(&target)
            .header(http::header::CONTENT_TYPE, "application/xml")
            .header("content-md5", md5)
            .body(HttpRequestBody::from(body))
            .map_err(|e| failed(e.to_string()))?;
        let credential = AwsCredential {
            key_id: credentials.access_key_id.clone(),
            secret_key: credentials.expose_secret().to_owned(),
            token: None,
        };
        AwsAuthorizer::new(&credential, "s3", region)
            .try_authorize(&mut request, None)
            .map_err(|e| failed(e.to_string()))?;
        let options = ClientOptions::new().with_allow_http(
            endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://")),
        );
        let client = ReqwestConnector::default()
            .connect(&options)
            .map_err(|e| failed(e.to_string()))?;
        let response = client
            .execute(request)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Ok(LifecycleApplied::Applied {
                status,
                url: target,
            });
        }
        let text = response
            .into_body()
            .bytes()
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        Err(BucketLifecycleError::Refused {
            status,
            code: xml_text(&text, "Code"),
            message: xml_text(&text, "Message"),
        })
    }
}

/// The text of the first `<tag>…</tag>` in an S3 error body (a flat, known shape: no parser
/// needed).
fn xml_text(body: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{tag}>"))? + start;
    let text = body[start..end].trim();
    (!text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_path_style_under_the_endpoint() {
        let r2 =
            ObjectStoreUrl::parse("s3://b?endpoint=https://acct.example.test&region=auto").unwrap();
        assert_eq!(
            lifecycle_url(&r2).unwrap(),
            "https://acct.example.test/b?lifecycle"
        );
        let aws = ObjectStoreUrl::parse("s3://b?region=eu-west-1").unwrap();
        assert_eq!(
            lifecycle_url(&aws).unwrap(),
            "https://s3.eu-west-1.amazonaws.com/b?lifecycle"
        );
    }

    #[test]
    fn error_bodies_are_read() {
        let body = "<?xml version=\"1.0\"?><Error><Code>NotImplemented</Code><Message>A header you provided implies functionality that is not implemented</Message></Error>";
        assert_eq!(xml_text(body, "Code").as_deref(), Some("NotImplemented"));
        assert!(xml_text(body, "Message").unwrap().starts_with("A header"));
        assert_eq!(xml_text("", "Code"), None);
    }
}
