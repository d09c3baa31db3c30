//! Prompt weighting as AUTOMATIC1111 writes it: `(word)` x1.1, `[word]` /1.1, `(word:1.3)`, escaped
//! brackets `\(`, `BREAK`, and prompts past 75 tokens in 75-token chunks, each encoded on its own and
//! concatenated along the token axis (A1111's long prompts). The weights scale the text encoder's
//! output per token, then the chunk is rescaled to its original mean (A1111's "Original" emphasis).
//!
//! [`parse_prompt_attention`] follows A1111's parser case for case, unbalanced brackets included;
//! [`chunk_tokens`] its `tokenize_line` (with the default comma backtrack of 20 tokens).
//! `tests/fixtures/prompt_weighting/` holds the same algorithm written out in Python, run on the
//! oracle's CLIP, and what it gave.

/// `(text)` multiplies by this; `[text]` divides by it.
pub const ROUND_BRACKET_MULTIPLIER: f64 = 1.1;
/// Tokens per chunk between BOS and EOS (for CLIP's 77 positions).
pub const CHUNK_LENGTH: usize = 75;
/// Chunks one prompt may take (1200 tokens): each is a text encoder call and 77 more keys in every
/// cross-attention of every step.
pub const MAX_CHUNKS: usize = 16;
/// A chunk that fills up moves the text after its last comma to the next chunk when that comma is at
/// most this many tokens back (A1111's `comma_padding_backtrack` default).
pub const COMMA_BACKTRACK: usize = 20;
use crate::tokenizer::{ClipTokenizer, TokenizerError};

/// A1111 marks a `BREAK` with this weight; one that brackets multiplied is read as the word "BREAK".
const BREAK_WEIGHT: f64 = -1.0;

/// A prompt that cannot be parsed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PromptError {
    /// `(text:W)` where W is not a number (A1111 fails on it too).
    #[error("prompt weighting: {0:?} in \"(text:{0})\" is not a number")]
    BadWeight(String),
    /// The tokenizer failed on a piece.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// More chunks than [`MAX_CHUNKS`].
    #[error("the prompt needs {chunks} chunks of {tokens_per_chunk} tokens; at most {max} are allowed", max = MAX_CHUNKS)]
    TooLong { chunks: usize, tokens_per_chunk: usize },
}

/// One piece of a parsed prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Text and its weight.
    Text(String, f64),
    /// A `BREAK`: the current chunk ends here.
    Break,
}

/// A match of A1111's attention regex at one position.
enum Token<'a> {
    /// `\(`, `\)`, `\[`, `\]`, `\\` (the character after the backslash) or a lone `\` (nothing).
    Escaped(&'a str),
    OpenRound,
    OpenSquare,
    /// `:W)` with W as written.
    WeightClose(&'a str, &'a str),
    CloseRound,
    CloseSquare,
    /// A run without `\ ( ) [ ] :`, or a lone `:`.
    Text(&'a str),
}

/// The next token of `s` (not empty), and its length in bytes: A1111's alternatives, first match wins.
fn next_token(s: &str) -> (Token<'_>, usize) {
    let mut chars = s.chars();
    let c = chars.next().expect("not empty");
    match c {
        '\\' => match chars.next() {
            Some(e @ ('(' | ')' | '[' | ']' | '\\')) => (Token::Escaped(&s[1..1 + e.len_utf8()]), 1 + e.len_utf8()),
            _ => (Token::Escaped(""), 1),
        },
        '(' => (Token::OpenRound, 1),
        '[' => (Token::OpenSquare, 1),
        ')' => (Token::CloseRound, 1),
        ']' => (Token::CloseSquare, 1),
        ':' => match weight_close(s) {
            Some((number, len)) => (Token::WeightClose(number, &s[..len]), len),
            None => (Token::Text(":"), 1),
        },
        _ => {
            let end = s.find(['\\', '(', ')', '[', ']', ':']).unwrap_or(s.len());
            (Token::Text(&s[..end]), end)
        }
    }
}

/// `:\s*([+-]?[.\d]+)\s*\)` at the start of `s`: the number and the match's length.
fn weight_close(s: &str) -> Option<(&str, usize)> {
    let rest = &s[1..];
    let skip_ws = |t: &str| t.len() - t.trim_start().len();
    let start = 1 + skip_ws(rest);
    let mut end = start;
    let bytes = s.as_bytes();
    if end < s.len() && (bytes[end] == b'+' || bytes[end] == b'-') {
        end += 1;
    }
    let digits = s[end..].find(|c: char| !(c == '.' || c.is_ascii_digit())).map_or(s.len(), |i| end + i);
    if digits == end {
        return None;
    }
    let after = digits + skip_ws(&s[digits..]);
    s[after..].starts_with(')').then(|| (&s[start..digits], after + 1))
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `re.split(r"\s*\bBREAK\b\s*", text)`.
fn split_break(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut from, mut search) = (0, 0);
    while let Some(i) = text[search..].find("BREAK").map(|i| search + i) {
        let end = i + "BREAK".len();
        let before = text[..i].chars().next_back();
        let after = text[end..].chars().next();
        if before.is_some_and(is_word) || after.is_some_and(is_word) {
            search = i + 1;
            continue;
        }
        let start = text[from..i].trim_end().len() + from;
        parts.push(&text[from..start]);
        from = end + (text[end..].len() - text[end..].trim_start().len());
        search = from.max(end);
    }
    parts.push(&text[from..]);
    parts
}

/// A1111's `parse_prompt_attention`: the prompt as text pieces with weights and `BREAK`s, runs of equal
/// weight merged. Unbalanced brackets apply to the end of the prompt; a closing bracket with no opening
/// one, and `:W)` outside round brackets, are text.
pub fn parse_prompt_attention(text: &str) -> Result<Vec<Piece>, PromptError> {
    // (text, weight), BREAK as BREAK_WEIGHT, as A1111 keeps them: brackets may multiply a BREAK's
    // weight, and then it is text.
    let mut res: Vec<(String, f64)> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply = |res: &mut Vec<(String, f64)>, from: usize, m: f64| {
        for piece in &mut res[from..] {
            piece.1 *= m;
        }
    };
    let mut rest = text;
    while !rest.is_empty() {
        let (token, len) = next_token(rest);
        rest = &rest[len..];
        match token {
            Token::Escaped(t) => res.push((t.to_string(), 1.0)),
            Token::OpenRound => round.push(res.len()),
            Token::OpenSquare => square.push(res.len()),
            Token::WeightClose(number, _) if !round.is_empty() => {
                let w: f64 = number.parse().map_err(|_| PromptError::BadWeight(number.to_string()))?;
                let from = round.pop().expect("not empty");
                multiply(&mut res, from, w);
            }
            Token::CloseRound if !round.is_empty() => {
                let from = round.pop().expect("not empty");
                multiply(&mut res, from, ROUND_BRACKET_MULTIPLIER);
            }
            Token::CloseSquare if !square.is_empty() => {
                let from = square.pop().expect("not empty");
                multiply(&mut res, from, 1.0 / ROUND_BRACKET_MULTIPLIER);
            }
            Token::WeightClose(_, t) | Token::Text(t) => push_text(&mut res, t),
            Token::CloseRound => push_text(&mut res, ")"),
            Token::CloseSquare => push_text(&mut res, "]"),
        }
    }
    for from in round {
        multiply(&mut res, from, ROUND_BRACKET_MULTIPLIER);
    }
    for from in square {
        multiply(&mut res, from, 1.0 / ROUND_BRACKET_MULTIPLIER);
    }
    if res.is_empty() {
        res.push((String::new(), 1.0));
    }
    let mut merged: Vec<(String, f64)> = Vec::with_capacity(res.len());
    for (t, w) in res {
        match merged.last_mut() {
            Some(last) if last.1 == w => last.0.push_str(&t),
            _ => merged.push((t, w)),
        }
    }
    Ok(merged
        .into_iter()
        .map(|(t, w)| if t == "BREAK" && w == BREAK_WEIGHT { Piece::Break } else { Piece::Text(t, w) })
        .collect())
}

fn push_text(res: &mut Vec<(String, f64)>, text: &str) {
    for (i, part) in split_break(text).into_iter().enumerate() {
        if i > 0 {
            res.push(("BREAK".into(), BREAK_WEIGHT));
        }
        res.push((part.to_string(), 1.0));
    }
}

/// One chunk for the text encoder: BOS, up to 75 tokens, EOS, padding; one weight per position.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub ids: Vec<u32>,
    pub weights: Vec<f32>,
}

impl Chunk {
    /// Whether every weight is 1 (the chunk's embedding is the text encoder's output as it is).
    pub fn is_unweighted(&self) -> bool {
        self.weights.iter().all(|&w| w == 1.0)
    }
}

/// How chunks are framed: special ids and length.
#[derive(Debug, Clone, Copy)]
pub struct ChunkFrame {
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    /// `,</w>`, where a full chunk may break (none: no backtracking).
    pub comma: Option<u32>,
    /// Tokens between BOS and EOS: [`CHUNK_LENGTH`] for CLIP's 77 positions.
    pub length: usize,
}

/// A1111's `tokenize_line`: the pieces' tokens (each piece tokenised on its own, no special tokens;
/// `None` for a `BREAK`) in chunks of `frame.length`. A chunk that fills up ends after its last comma
/// when that is at most [`COMMA_BACKTRACK`] tokens back; `BREAK` ends a chunk (padding it); an empty
/// prompt is one chunk.
pub fn chunk_tokens(pieces: &[(Option<Vec<u32>>, f64)], frame: ChunkFrame) -> Vec<Chunk> {
    let (ids, length) = (frame, frame.length);
    let mut chunks = Vec::new();
    let (mut tokens, mut weights): (Vec<u32>, Vec<f64>) = (Vec::new(), Vec::new());
    let mut last_comma: Option<usize> = None;
    let finish = |chunks: &mut Vec<Chunk>, tokens: &mut Vec<u32>, weights: &mut Vec<f64>| {
        let n = tokens.len();
        let mut ids_out = Vec::with_capacity(length + 2);
        ids_out.push(ids.bos);
        ids_out.append(tokens);
        ids_out.push(ids.eos);
        ids_out.resize(length + 2, ids.pad);
        let mut w = Vec::with_capacity(length + 2);
        w.push(1.0);
        w.extend(weights.drain(..).map(|w| w as f32));
        w.resize(length + 2, 1.0);
        debug_assert!(n <= length);
        chunks.push(Chunk { ids: ids_out, weights: w });
    };
    for (piece_tokens, weight) in pieces {
        let Some(piece_tokens) = piece_tokens else {
            // A BREAK.
            finish(&mut chunks, &mut tokens, &mut weights);
            last_comma = None;
            continue;
        };
        for &token in piece_tokens {
            if Some(token) == ids.comma {
                last_comma = Some(tokens.len());
            } else if let Some(comma) = last_comma
                && tokens.len() == length
                && tokens.len() - comma <= COMMA_BACKTRACK
            {
                let moved_tokens = tokens.split_off(comma + 1);
                let moved_weights = weights.split_off(comma + 1);
                finish(&mut chunks, &mut tokens, &mut weights);
                last_comma = None;
                tokens = moved_tokens;
                weights = moved_weights;
            }
            if tokens.len() == length {
                finish(&mut chunks, &mut tokens, &mut weights);
                last_comma = None;
            }
            tokens.push(token);
            weights.push(*weight);
        }
    }
    if !tokens.is_empty() || chunks.is_empty() {
        finish(&mut chunks, &mut tokens, &mut weights);
    }
    chunks
}

/// A prompt as weighted chunks for the text encoder: parsed, each piece tokenised on its own, chunked.
pub fn prompt_chunks(tokenizer: &ClipTokenizer, text: &str) -> Result<Vec<Chunk>, PromptError> {
    let pieces = parse_prompt_attention(text)?
        .into_iter()
        .map(|p| match p {
            Piece::Break => Ok((None, 1.0)),
            Piece::Text(t, w) => Ok((Some(tokenizer.tokenize(&t)?), w)),
        })
        .collect::<Result<Vec<_>, TokenizerError>>()?;
    let frame = ChunkFrame {
        bos: tokenizer.bos,
        eos: tokenizer.eos,
        pad: tokenizer.pad,
        comma: tokenizer.token_id(",</w>"),
        length: tokenizer.max_length - 2,
    };
    let chunks = chunk_tokens(&pieces, frame);
    if chunks.len() > MAX_CHUNKS {
        return Err(PromptError::TooLong { chunks: chunks.len(), tokens_per_chunk: frame.length });
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<(String, f64)> {
        parse_prompt_attention(text)
            .unwrap()
            .into_iter()
            .map(|p| match p {
                Piece::Text(t, w) => (t, w),
                Piece::Break => ("BREAK".into(), -1.0),
            })
            .collect()
    }

    fn p(pieces: &[(&str, f64)]) -> Vec<(String, f64)> {
        pieces.iter().map(|&(t, w)| (t.to_string(), w)).collect()
    }

    /// A1111's documented examples (`prompt_parser.parse_prompt_attention`'s docstring).
    #[test]
    fn a1111_documented_examples() {
        assert_eq!(parse("normal text"), p(&[("normal text", 1.0)]));
        assert_eq!(parse("an (important) word"), p(&[("an ", 1.0), ("important", 1.1), (" word", 1.0)]));
        assert_eq!(parse("(unbalanced"), p(&[("unbalanced", 1.1)]));
        assert_eq!(parse("\\(literal\\]"), p(&[("(literal]", 1.0)]));
        assert_eq!(parse("(unnecessary)(parens)"), p(&[("unnecessaryparens", 1.1)]));
        let house = parse("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).");
        let want = [
            ("a ", 1.0),
            ("house", 1.3 * 1.1 * 1.1),
            (" ", 1.1),
            ("on", 1.1 / 1.1),
            (" a ", 1.1),
            ("hill", 0.5 * 1.1),
            (", sun, ", 1.1),
            ("sky", 1.1 * 1.1 * 1.1 * 1.1),
            (".", 1.1),
        ];
        assert_eq!(house.len(), want.len(), "{house:?}");
        for ((t, w), (wt, ww)) in house.iter().zip(want) {
            assert_eq!(t, wt);
            assert!((w - ww).abs() < 1e-12, "{t}: {w} vs {ww}");
        }
    }

    #[test]
    fn nesting_multiplies() {
        assert_eq!(parse("((word))"), p(&[("word", 1.1 * 1.1)]));
        assert_eq!(parse("[[word]]"), p(&[("word", 1.0 / 1.1 / 1.1)]));
        assert_eq!(parse("([word])"), p(&[("word", 1.0 / 1.1 * 1.1)]));
        assert_eq!(parse("((a:1.5) b)"), p(&[("a", 1.5 * 1.1), (" b", 1.1)]));
    }

    #[test]
    fn explicit_weights() {
        assert_eq!(parse("(word:1.3)"), p(&[("word", 1.3)]));
        assert_eq!(parse("(word: 0.5 )"), p(&[("word", 0.5)]));
        assert_eq!(parse("(word:-1)"), p(&[("word", -1.0)]));
        assert_eq!(parse("(word:+.5)"), p(&[("word", 0.5)]));
        assert_eq!(parse("(word:2.)"), p(&[("word", 2.0)]));
        assert_eq!(parse("(word:0)"), p(&[("word", 0.0)]));
        // The weight belongs to the innermost open round bracket.
        assert_eq!(parse("((a:2) b:3)"), p(&[("a", 6.0), (" b", 3.0)]));
    }

    #[test]
    fn a_weight_that_is_not_a_number_is_an_error() {
        assert_eq!(parse_prompt_attention("(word:1.2.3)"), Err(PromptError::BadWeight("1.2.3".into())));
        assert_eq!(parse_prompt_attention("(word:.)"), Err(PromptError::BadWeight(".".into())));
    }

    #[test]
    fn colons_that_are_not_weights_are_text() {
        assert_eq!(parse("a: b"), p(&[("a: b", 1.0)]));
        assert_eq!(parse("(a:b)"), p(&[("a:b", 1.1)]));
        assert_eq!(parse("(a:)"), p(&[("a:", 1.1)]));
        assert_eq!(parse("time 12:30"), p(&[("time 12:30", 1.0)]));
        // `:W)` with no open round bracket is text.
        assert_eq!(parse("a:1.5)"), p(&[("a:1.5)", 1.0)]));
        assert_eq!(parse("[a:1.5)]"), p(&[("a:1.5)", 1.0 / 1.1)]));
    }

    #[test]
    fn escapes() {
        assert_eq!(parse("\\(a\\)"), p(&[("(a)", 1.0)]));
        assert_eq!(parse("\\[a\\]"), p(&[("[a]", 1.0)]));
        assert_eq!(parse("a \\\\ b"), p(&[("a \\ b", 1.0)]));
        // A backslash before anything else is dropped, as A1111 drops it.
        assert_eq!(parse("a\\b"), p(&[("ab", 1.0)]));
        assert_eq!(parse("(a\\)b)"), p(&[("a)b", 1.1)]));
        assert_eq!(parse("trailing\\"), p(&[("trailing", 1.0)]));
    }

    #[test]
    fn unbalanced_brackets_as_a1111() {
        assert_eq!(parse("a) b"), p(&[("a) b", 1.0)]));
        assert_eq!(parse("a] b"), p(&[("a] b", 1.0)]));
        assert_eq!(parse("[unclosed"), p(&[("unclosed", 1.0 / 1.1)]));
        assert_eq!(parse("((a"), p(&[("a", 1.1 * 1.1)]));
        assert_eq!(parse("(a]"), p(&[("a]", 1.1)]));
        assert_eq!(parse("[a)"), p(&[("a)", 1.0 / 1.1)]));
        // The round bracket closes over the open square one; the square one then runs to the end.
        let square = 1.0 / 1.1;
        assert_eq!(parse("(a [b) c"), p(&[("a ", 1.1), ("b", 1.0 * 1.1 * square), (" c", square)]));
    }

    #[test]
    fn empty_and_bracket_only_prompts() {
        assert_eq!(parse(""), p(&[("", 1.0)]));
        assert_eq!(parse("()"), p(&[("", 1.0)]));
        assert_eq!(parse("[]"), p(&[("", 1.0)]));
        assert_eq!(parse("( )"), p(&[(" ", 1.1)]));
    }

    #[test]
    fn break_splits_chunks() {
        assert_eq!(parse("a BREAK b"), p(&[("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]));
        assert_eq!(parse("a\nBREAK\nb"), p(&[("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]));
        // A word containing BREAK is not one.
        assert_eq!(parse("BREAKFAST and UNBREAKABLE"), p(&[("BREAKFAST and UNBREAKABLE", 1.0)]));
        assert_eq!(parse("break"), p(&[("break", 1.0)]));
        assert_eq!(parse("BREAK"), p(&[("", 1.0), ("BREAK", -1.0), ("", 1.0)]));
        // Inside brackets its weight is multiplied: then it is the word "BREAK".
        assert_eq!(parse("(a BREAK b)"), p(&[("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]));
        assert_eq!(parse_prompt_attention("a BREAK b").unwrap()[1], Piece::Break);
        assert_eq!(parse_prompt_attention("(a BREAK b)").unwrap()[1], Piece::Text("BREAK".into(), -1.0 * 1.1));
    }

    #[test]
    fn plain_prompts_are_one_piece_of_weight_one() {
        // Such a prompt, within one chunk, encodes exactly as diffusers encodes it.
        for text in ["a photo of an astronaut riding a horse", "", "a: b, c", "(a:1)"] {
            assert_eq!(parse(text).len(), 1, "{text:?}");
            assert_eq!(parse(text)[0].1, 1.0, "{text:?}");
        }
        for text in ["(a)", "[a]", "a BREAK b", "(a:1)b(c:2)"] {
            assert!(parse(text).iter().any(|(_, w)| *w != 1.0), "{text:?}");
        }
    }

    #[test]
    fn odd_input_does_not_panic() {
        for text in
            ["((((((((((((", "]]]]]", ":::::", "\\", "(é:1.5)", "(\u{1F600}:2)", "(:)", "(a:1e3)", "BREAK BREAK"]
        {
            let _ = parse_prompt_attention(text);
        }
        assert_eq!(parse("(é:1.5)"), p(&[("é", 1.5)]));
        // `1e3` is not in A1111's number pattern: text.
        assert_eq!(parse("(a:1e3)"), p(&[("a:1e3", 1.1)]));
    }

    const IDS: ChunkFrame = ChunkFrame { bos: 1, eos: 2, pad: 0, comma: Some(9), length: CHUNK_LENGTH };

    #[test]
    fn chunks_are_framed_and_padded() {
        let c = chunk_tokens(&[(Some(vec![5, 6]), 1.5)], IDS);
        assert_eq!(c.len(), 1);
        assert_eq!(&c[0].ids[..5], &[1, 5, 6, 2, 0]);
        assert_eq!(c[0].ids.len(), 77);
        assert_eq!(&c[0].weights[..4], &[1.0, 1.5, 1.5, 1.0]);
        assert!(!c[0].is_unweighted());
        // The empty prompt is one chunk.
        let e = chunk_tokens(&[(Some(vec![]), 1.0)], IDS);
        assert_eq!((e.len(), &e[0].ids[..3]), (1, &[1, 2, 0][..]));
        assert!(e[0].is_unweighted());
    }

    #[test]
    fn long_prompts_split_at_75_tokens() {
        let c = chunk_tokens(&[(Some(vec![5; 75]), 1.0)], IDS);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].ids[75], c[0].ids[76]), (5, 2));
        let c = chunk_tokens(&[(Some(vec![5; 76]), 1.0)], IDS);
        assert_eq!(c.len(), 2);
        assert_eq!(&c[1].ids[..4], &[1, 5, 2, 0]);
        let c = chunk_tokens(&[(Some(vec![5; 300]), 1.0)], IDS);
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn a_full_chunk_breaks_after_a_recent_comma() {
        // A comma at position 60 of 75: the 15 tokens after it move to the next chunk.
        let mut tokens = vec![5; 60];
        tokens.push(9);
        tokens.extend(vec![6; 14 + 5]);
        let c = chunk_tokens(&[(Some(tokens), 1.0)], IDS);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].ids[61], 9, "the comma ends the first chunk");
        assert_eq!(&c[0].ids[62..64], &[2, 0]);
        assert_eq!(&c[1].ids[1..20], &[6; 19]);
        // A comma further back than 20 tokens: a plain split at 75.
        let mut tokens = vec![5; 30];
        tokens.push(9);
        tokens.extend(vec![6; 60]);
        let c = chunk_tokens(&[(Some(tokens), 1.0)], IDS);
        assert_eq!((c[0].ids[75], c[0].ids[76]), (6, 2));
    }

    #[test]
    fn break_ends_a_chunk() {
        let c = chunk_tokens(&[(Some(vec![5]), 1.0), (None, -1.0), (Some(vec![6]), 1.0)], IDS);
        assert_eq!(c.len(), 2);
        assert_eq!(&c[0].ids[..4], &[1, 5, 2, 0]);
        assert_eq!(&c[1].ids[..4], &[1, 6, 2, 0]);
        // A BREAK first gives an empty chunk, as in A1111.
        let c = chunk_tokens(&[(None, -1.0), (Some(vec![6]), 1.0)], IDS);
        assert_eq!(c.len(), 2);
        assert_eq!(&c[0].ids[..3], &[1, 2, 0]);
    }
}
