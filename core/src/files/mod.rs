//! Uploaded files: accepted content types and the magic-byte check, sanitized filenames, and
//! signed, expiring download URLs.

mod content;
mod filename;
pub mod scan;
mod signed_url;
pub mod sql;

pub use content::{essence, matches_magic, servable, NotServed, DEFAULT_UPLOAD_TYPES, SNIFF_BYTES};
pub use filename::{content_disposition, sanitize_filename};
pub use signed_url::{sign_download, signed_url, verify_download, SignedUrlError};
