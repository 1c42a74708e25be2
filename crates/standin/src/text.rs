//! The stand-in's "tokenizer" and "model": one token per whitespace-separated word, block hashes
//! chained over those tokens, and output words drawn from a fixed list by a seeded generator.
//!
//! Nothing here is a real tokenizer: a word is a token so that a test can write a prompt of N
//! tokens as N words, and count what the engine will charge for it.

/// FNV-1a's offset basis and prime (64-bit): a small, stable hash whose values do not change
/// between Rust releases, so block hashes and answers are the same on every build.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The words answers are made of.
const WORDS: [&str; 32] = [
    "the", "river", "stone", "light", "quiet", "north", "garden", "paper", "window", "amber", "field", "signal", "harbor", "winter",
    "copper", "echo", "maple", "orbit", "lantern", "meadow", "silver", "thunder", "velvet", "cedar", "falcon", "glacier", "marble",
    "prairie", "saffron", "tundra", "willow", "zephyr",
];

pub fn fnv(bytes: &[u8]) -> u64 {
    fnv_continue(FNV_OFFSET, bytes)
}

fn fnv_continue(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// SplitMix64: one step of a tiny, well-mixed generator, enough for seeded choices.
pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A value in [0, 1) from a hash, for rates.
pub fn unit(x: u64) -> f64 {
    (splitmix(x) >> 11) as f64 / (1u64 << 53) as f64
}

/// The tokens of a text prompt: one per whitespace-separated word, each the hash of the word.
pub fn tokenize(text: &str) -> Vec<u64> {
    text.split_whitespace().map(|w| fnv(w.as_bytes())).collect()
}

/// The tokens of a prompt given as token ids; mixed so that ids never collide with words.
pub fn from_ids(ids: &[u32]) -> Vec<u64> {
    ids.iter().map(|&id| splitmix(u64::from(id) ^ 0x1d5)).collect()
}

/// The tokens of a chat: each message is a role marker token, then its words, so that chats sharing
/// a system prompt share a token prefix.
pub fn tokenize_chat<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u64> {
    let mut tokens = Vec::new();
    for (role, content) in messages {
        tokens.push(fnv(format!("<|{role}|>").as_bytes()));
        tokens.extend(tokenize(content));
    }
    tokens
}

/// The chain of block hashes over a prompt's full blocks: each block's hash covers its tokens and
/// the hash of the block before it, so equal hashes mean equal prefixes. The chain starts from the
/// model's name, so two models never share blocks.
pub fn block_hashes(model: &str, tokens: &[u64], block_tokens: usize) -> Vec<u64> {
    let mut parent = fnv(model.as_bytes());
    tokens
        .chunks_exact(block_tokens)
        .map(|block| {
            let mut hash = fnv_continue(FNV_OFFSET, &parent.to_le_bytes());
            for token in block {
                hash = fnv_continue(hash, &token.to_le_bytes());
            }
            parent = hash;
            hash
        })
        .collect()
}

/// A digest of a whole prompt, every token included, to seed its answer.
pub fn digest(tokens: &[u64]) -> u64 {
    tokens.iter().fold(FNV_OFFSET, |h, t| fnv_continue(h, &t.to_le_bytes()))
}

/// The `index`th output word of an answer: a function of the engine's seed, the prompt and the
/// request's own seed only, so the same request always gets the same answer.
pub fn output_word(engine_seed: u64, prompt_digest: u64, request_seed: u64, index: usize) -> &'static str {
    let x = splitmix(engine_seed ^ splitmix(prompt_digest ^ splitmix(request_seed ^ index as u64)));
    WORDS[(x % WORDS.len() as u64) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_is_a_token() {
        assert_eq!(tokenize("  one two\tthree\nfour ").len(), 4);
        assert_eq!(tokenize("a b"), tokenize("a   b"));
        assert_eq!(tokenize_chat([("system", "be brief"), ("user", "hi")]).len(), 5);
    }

    #[test]
    fn block_chains_share_exactly_the_common_prefix() {
        let a = tokenize(&(0..40).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" "));
        let mut b = a.clone();
        b[20] = fnv(b"different");
        let (ha, hb) = (block_hashes("m", &a, 8), block_hashes("m", &b, 8));
        assert_eq!(ha.len(), 5);
        // Token 20 lies in block 2: blocks 0 and 1 agree, and every block from 2 on differs.
        assert_eq!(ha[..2], hb[..2]);
        assert!(ha[2..].iter().zip(&hb[2..]).all(|(x, y)| x != y));
        assert_ne!(block_hashes("other", &a, 8)[0], ha[0]);
    }

    #[test]
    fn answers_are_reproducible() {
        let words = |seed| (0..8).map(|i| output_word(seed, 42, 0, i)).collect::<Vec<_>>();
        assert_eq!(words(1), words(1));
        assert_ne!(words(1), words(2));
    }
}
