//! Token counts when a provider reports none: OpenAI's `cl100k_base` BPE, with the chat format's
//! per-message overhead. Close for OpenAI-family models, an estimate for others — answers say
//! `"estimated": true` when these counts are used.

use std::sync::OnceLock;

use cognomega_core::ai::Message;
use tiktoken_rs::CoreBPE;

/// Tokens the chat format adds per message (role and separators), and to prime the reply.
const PER_MESSAGE: u64 = 3;
const REPLY_PRIMING: u64 = 3;

fn bpe() -> Option<&'static CoreBPE> {
    static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::cl100k_base().ok()).as_ref()
}

/// Tokens in `text`.
#[must_use]
pub fn count(text: &str) -> u64 {
    match bpe() {
        Some(bpe) => bpe.encode_with_special_tokens(text).len() as u64,
        // The vocabulary is compiled in, so this cannot happen; ~4 bytes per token otherwise.
        None => (text.len() as u64).div_ceil(4),
    }
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
