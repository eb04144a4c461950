//! Uploaded files: sanitized filenames and signed, expiring download URLs.

mod filename;
mod signed_url;

pub use filename::sanitize_filename;
pub use signed_url::{sign_download, verify_download, SignedUrlError};
