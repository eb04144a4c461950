//! Server-Sent Events framing, without a transport: bytes in (split anywhere), the `data` of
//! each completed event out. Lines end with `\n`, `\r\n` or `\r`; `data:` lines of one event
//! are joined with `\n`; comments (`:`) and other fields are skipped; a blank line dispatches.

use cognomega_core::ai::Failure;

/// Longest line accepted: a provider's event is a small JSON object.
const MAX_LINE: usize = 1024 * 1024;

/// An incremental SSE decoder.
#[derive(Debug, Default)]
pub struct SseDecoder {
    line: Vec<u8>,
    data: Option<String>,
    /// The last byte read was a `\r`: a `\n` right after it ends nothing more.
    after_cr: bool,
}

impl SseDecoder {
    /// The `data` of the events completed by `bytes`.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, Failure> {
        let mut out = Vec::new();
        for &b in bytes {
            let after_cr = std::mem::replace(&mut self.after_cr, b == b'\r');
            match b {
                b'\n' if after_cr => {}
                b'\n' | b'\r' => self.end_line(&mut out),
                _ => {
                    if self.line.len() >= MAX_LINE {
                        return Err(Failure::Protocol(format!(
                            "a streamed line is longer than {MAX_LINE} bytes"
                        )));
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(out)
    }

    /// The end of the stream: an event still open (no blank line after it) is dispatched.
    pub fn finish(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.line.is_empty() {
            self.end_line(&mut out);
        }
        out.extend(self.data.take());
        out
    }

    fn end_line(&mut self, out: &mut Vec<String>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            out.extend(self.data.take());
            return;
        }
        let line = String::from_utf8_lossy(&line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        if field == "data" {
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let mut d = SseDecoder::default();
        let got = d
            .push(b"event: x\ndata: a\ndata:b\r\r: note\n\ndata: \xc3")
            .unwrap_or_default();
        assert_eq!(got, ["a\nb"]);
        // A character split across reads is whole once its line is.
        let got = d.push(b"\xa9\n\ndata: tail").unwrap_or_default();
        assert_eq!(got, ["é"]);
        assert_eq!(d.finish(), ["tail"]);
        assert!(d.finish().is_empty());
    }
}
