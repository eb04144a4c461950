//! What an upload may be: the accepted content types, and the check that the bytes are what
//! the client declared. Shared by the native server and the edge host.

/// Bytes read before storing anything, to sniff the content type.
pub const SNIFF_BYTES: usize = 8192;

/// The content types uploads accept unless configured otherwise.
pub const DEFAULT_UPLOAD_TYPES: [&str; 8] = [
    "image/png",
    "image/jpeg",
    "image/webp",
    "image/gif",
    "application/pdf",
    "text/plain",
    "text/csv",
    "application/json",
];

/// A `Content-Type` header's media type, lower-cased, without parameters.
#[must_use]
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Checks the declared type against the first bytes: binary formats must carry their magic;
/// text types must not look like a binary format and must be UTF-8 so far.
#[must_use]
pub fn matches_magic(declared: &str, head: &[u8]) -> bool {
    let sniffed = infer::get(head).map(|t| t.mime_type());
    match declared {
        "text/plain" | "text/csv" | "application/json" => {
            sniffed.is_none() && (std::str::from_utf8(head).is_ok() || utf8_cut_at_end(head))
        }
        other => sniffed == Some(other),
    }
}

/// A UTF-8 prefix that only fails because the sniff window cut a character in half.
fn utf8_cut_at_end(head: &[u8]) -> bool {
    matches!(std::str::from_utf8(head), Err(e) if e.error_len().is_none())
}

/// Why an upload is not served: an HTTP status, a stable code and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotServed {
    /// 403 (infected) or 409 (not scanned yet, or the scan failed).
    pub status: u16,
    /// `file_infected`, `scan_pending` or `scan_failed`.
    pub code: &'static str,
    /// What happened, for the client.
    pub message: String,
}

/// Whether an upload in scan state `scan` may be downloaded: `clean` and `skipped` (no scanner
/// configured) are served; everything else is refused.
pub fn servable(scan: &str, signature: Option<&str>) -> Result<(), NotServed> {
    let refuse = |status, code, message: String| {
        Err(NotServed {
            status,
            code,
            message,
        })
    };
    match scan {
        "clean" | "skipped" => Ok(()),
        "infected" => refuse(
            403,
            "file_infected",
            format!(
                "the file is quarantined: {}",
                signature.unwrap_or("malware")
            ),
        ),
        "pending" => refuse(
            409,
            "scan_pending",
            "the file is still being scanned; retry shortly".to_owned(),
        ),
        other => refuse(
            409,
            "scan_failed",
            format!("the file could not be scanned ({other}); it is not served"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_are_checked_against_the_bytes() {
        let png = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13];
        assert!(matches_magic("image/png", &png));
        assert!(!matches_magic("image/jpeg", &png));
        assert!(!matches_magic("text/plain", &png));
        assert!(matches_magic("text/plain", "héllo".as_bytes()));
        // A character cut by the sniff window is still text.
        assert!(matches_magic("text/csv", &"é".as_bytes()[..1]));
        assert!(!matches_magic(
            "application/json",
            &[0xff, 0xfe, 0x00, 0x41]
        ));
        assert_eq!(essence(" Image/PNG ; q=1"), "image/png");
    }

    #[test]
    fn only_clean_or_unscanned_uploads_are_served() {
        assert!(servable("clean", None).is_ok());
        assert!(servable("skipped", None).is_ok());
        let infected = servable("infected", Some("Eicar")).expect_err("infected is refused");
        assert_eq!((infected.status, infected.code), (403, "file_infected"));
        assert!(infected.message.contains("Eicar"));
        assert_eq!(
            servable("pending", None)
                .expect_err("pending is refused")
                .code,
            "scan_pending"
        );
        assert_eq!(
            servable("scan_failed", None)
                .expect_err("failed is refused")
                .code,
            "scan_failed"
        );
    }
}
