//! Token counts when a provider reports none: OpenAI's `cl100k_base` BPE (feature `tiktoken`,
//! on by default), with the chat format's per-message overhead. Close for OpenAI-family models,
//! an estimate for others — answers say `"estimated": true` when these counts are used.
//! Without the feature (a host that cannot afford the vocabulary), ~4 bytes per token.

use cognomega_core::ai::Message;

/// Tokens the chat format adds per message (role and separators), and to prime the reply.
const PER_MESSAGE: u64 = 3;
const REPLY_PRIMING: u64 = 3;

/// Tokens in `text` by `cl100k_base`, if it is built in (and loaded, which a compiled-in
/// vocabulary always does).
#[cfg(feature = "tiktoken")]
fn bpe_count(text: &str) -> Option<u64> {
    static BPE: std::sync::OnceLock<Option<tiktoken_rs::CoreBPE>> = std::sync::OnceLock::new();
    let bpe = BPE
        .get_or_init(|| tiktoken_rs::cl100k_base().ok())
        .as_ref()?;
    Some(bpe.encode_with_special_tokens(text).len() as u64)
}

#[cfg(not(feature = "tiktoken"))]
fn bpe_count(_text: &str) -> Option<u64> {
    None
}

/// Tokens in `text` (~4 bytes per token without the vocabulary).
#[must_use]
pub fn count(text: &str) -> u64 {
    bpe_count(text).unwrap_or_else(|| (text.len() as u64).div_ceil(4))
}

/// Tokens of a prompt.
#[must_use]
pub fn count_prompt(messages: &[Message]) -> u64 {
    messages
        .iter()
        .map(|m| PER_MESSAGE + count(&m.role) + count(&m.content))
        .sum::<u64>()
        + REPLY_PRIMING
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(feature = "tiktoken")]
    fn counts_like_the_tokenizer() {
        assert_eq!(count(""), 0);
        assert_eq!(count("hello world"), 2);
        let m = [Message {
            role: "user".into(),
            content: "hello world".into(),
        }];
        assert_eq!(count_prompt(&m), 3 + 1 + 2 + 3);
    }
}
