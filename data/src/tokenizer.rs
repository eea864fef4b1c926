//! The question tokenizer: lower-case, split on anything that is not a letter,
//! digit or apostrophe. SQL reaches it as `kallista_tokenize`, so training
//! data and served questions are tokenized alike.

/// Id of the padding token in every Kallista vocabulary.
pub const PAD_ID: i32 = 0;
/// Id of out-of-vocabulary tokens.
pub const UNK_ID: i32 = 1;
pub const PAD: &str = "<pad>";
pub const UNK: &str = "<unk>";

/// Splits `text` into lower-case word tokens.
///
/// ```
/// assert_eq!(kallista_data::tokenizer::tokenize("What colour is HIS shirt?"), ["what", "colour", "is", "his", "shirt"]);
/// ```
pub fn tokenize(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|t| !t.is_empty())
        .map(|t| t.trim_matches('\'').to_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Maps tokens to ids with a vocabulary whose position `i` holds the token of id `i`
/// (`vocab[0] = "<pad>"`, `vocab[1] = "<unk>"`); unknown tokens map to [`UNK_ID`].
pub fn lookup<'a>(tokens: impl IntoIterator<Item = &'a str>, index: &std::collections::HashMap<&str, i32>) -> Vec<i32> {
    tokens.into_iter().map(|t| index.get(t).copied().unwrap_or(UNK_ID)).collect()
}

/// Right-pads with [`PAD_ID`] or truncates to `len`.
pub fn pad(mut ids: Vec<i32>, len: usize) -> Vec<i32> {
    ids.resize(len, PAD_ID);
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizes_punctuation_and_case() {
        assert_eq!(tokenize("  Which way is he moving?!"), ["which", "way", "is", "he", "moving"]);
        assert_eq!(tokenize("What's the man's shirt colour"), ["what's", "the", "man's", "shirt", "colour"]);
        assert!(tokenize(" ?? ").is_empty());
    }

    #[test]
    fn lookup_and_pad() {
        let index = std::collections::HashMap::from([("what", 2), ("colour", 3)]);
        assert_eq!(pad(lookup(["what", "is", "colour"], &index), 5), [2, 1, 3, 0, 0]);
        assert_eq!(pad(vec![5, 6, 7], 2), [5, 6]);
    }
}
