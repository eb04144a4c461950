//! Filenames from clients are kept only as metadata (object keys never derive from them), but
//! they end up in `Content-Disposition` headers and in UIs, so they are made harmless here.

use unicode_normalization::UnicodeNormalization;

/// Windows device names, refused as a base name whatever the extension.
const RESERVED: [&str; 22] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Longest sanitized name, in bytes.
const MAX_BYTES: usize = 255;

/// Makes a client-supplied filename safe to store and to show:
///
/// - Unicode NFC;
/// - only the last path component (`/` and `\` separate components), so `../../etc/passwd`
///   becomes `passwd`;
/// - control characters (NUL included), bidi overrides and isolates (`U+202E` can make
///   `gnp.exe` display as `exe.png`), and `:*?"<>|` are removed;
/// - leading dots and spaces, trailing dots and spaces are trimmed (no hidden or
///   Windows-ambiguous names);
/// - Windows device names (`CON`, `nul.txt`, …) get a `_` prefix;
/// - at most 255 bytes, cut on a character boundary, keeping the extension when it is short;
/// - an empty result becomes `file`.
///
/// Double extensions like `invoice.pdf.exe` are kept as they are: the name is only metadata,
/// and the content type comes from the bytes (magic sniffing), never from the name.
#[must_use]
pub fn sanitize_filename(raw: &str) -> String {
    let normalized: String = raw.nfc().collect();
    let last = normalized.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last
        .chars()
        .filter(|c| {
            !c.is_control()
                && !is_bidi_control(*c)
                && !matches!(c, ':' | '*' | '?' | '"' | '<' | '>' | '|')
        })
        .collect();
    let trimmed = cleaned
        .trim_start_matches(['.', ' '])
        .trim_end_matches(['.', ' ']);
    let mut name = if trimmed.is_empty() {
        "file".to_owned()
    } else {
        trimmed.to_owned()
    };
    let base = name
        .split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    if RESERVED.contains(&base.as_str()) {
        name.insert(0, '_');
    }
    truncate(name)
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn truncate(name: String) -> String {
    if name.len() <= MAX_BYTES {
        return name;
    }
    let (stem, ext) = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && ext.len() <= 16 => (stem, Some(ext)),
        _ => (name.as_str(), None),
    };
    let budget = MAX_BYTES - ext.map_or(0, |e| e.len() + 1);
    let mut cut = String::with_capacity(MAX_BYTES);
    for c in stem.chars() {
        if cut.len() + c.len_utf8() > budget {
            break;
        }
        cut.push(c);
    }
    if let Some(ext) = ext {
        cut.push('.');
        cut.push_str(ext);
    }
    cut
}

/// `Content-Disposition: attachment` for `filename`: an ASCII fallback (quotes, backslashes
/// and control characters as `_`) and the exact name percent-encoded (RFC 6266 `filename*`).
#[must_use]
pub fn content_disposition(filename: &str) -> String {
    let ascii: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = filename
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::sanitize_filename as s;

    #[test]
    fn hostile_names() {
        assert_eq!(s("../../etc/passwd"), "passwd");
        assert_eq!(s("..\\..\\windows\\system32\\cmd.exe"), "cmd.exe");
        assert_eq!(s("a\u{0000}b"), "ab");
        assert_eq!(s("\u{202E}gnp.exe"), "gnp.exe");
        assert_eq!(s("CON"), "_CON");
        assert_eq!(s("nul.txt"), "_nul.txt");
        assert_eq!(s("console.log"), "console.log");
        assert_eq!(s("invoice.pdf.exe"), "invoice.pdf.exe");
        assert_eq!(s(".bashrc"), "bashrc");
        assert_eq!(s("..."), "file");
        assert_eq!(s(""), "file");
        assert_eq!(s("name. "), "name");
        assert_eq!(s("a:b*c?.txt"), "abc.txt");
        assert_eq!(s("tab\there.txt"), "tabhere.txt");
    }

    #[test]
    fn length_and_unicode() {
        let long = format!("{}.png", "x".repeat(300));
        let out = s(&long);
        assert_eq!(out.len(), 255);
        assert!(out.ends_with(".png"));
        let wide = "é".repeat(200);
        let out = s(&wide);
        assert!(out.len() <= 255);
        assert!(out.is_char_boundary(out.len()));
        // NFD input comes out NFC: "e" + combining acute ⇒ "é".
        assert_eq!(s("caf\u{0065}\u{0301}.txt"), "caf\u{00e9}.txt");
    }
}
