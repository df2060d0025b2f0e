//! A validating one-pass JSON scanner for the hot path: the envelope's top-level fields and
//! the declared fields inside `data` / `metadata` are found in one walk over the bytes, with
//! strings skipped eight bytes at a time.
//!
//! It accepts only what serde_json accepts. What it does not handle itself (an error of any
//! kind, an escaped object key, a duplicate known field, a `\u` surrogate, deep nesting, `-0`)
//! makes it *decline*, and the caller takes the serde path, which gives the same result or
//! the error message. `decode::tests` and `window::columns` check both paths agree on
//! generated and mutated input.

use std::borrow::Cow;

/// The scanner does not handle this input: use the serde path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Declined;

pub(crate) type Scan<T> = Result<T, Declined>;

/// Nesting deeper than this declines (serde_json's own limit is 128).
const MAX_DEPTH: u32 = 100;

/// A JSON value as found: strings borrowed raw (without quotes, escapes as written).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Token<'a> {
    Str {
        raw: &'a str,
        escaped: bool,
    },
    Num(&'a str),
    Bool(bool),
    Null,
    /// An object or array (skipped).
    Nested,
}

impl<'a> Token<'a> {
    /// A string token's value (escapes resolved, which copies).
    pub fn string(self) -> Option<Cow<'a, str>> {
        match self {
            Token::Str { raw, escaped: false } => Some(Cow::Borrowed(raw)),
            Token::Str { raw, escaped: true } => unescape(raw).map(Cow::Owned),
            _ => None,
        }
    }
}

/// Resolves the escapes of a string's raw content (already validated).
fn unescape(raw: &str) -> Option<String> {
    let mut quoted = String::with_capacity(raw.len() + 2);
    quoted.push('"');
    quoted.push_str(raw);
    quoted.push('"');
    serde_json::from_str(&quoted).ok()
}

pub(crate) struct Scanner<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
    depth: u32,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Flags (high bit per byte) for the bytes of `w` (little endian) that are `"`, `\` or a
/// control character. Bytes above the first flagged one may be flagged wrongly (borrows),
/// the lowest flag is exact: `trailing_zeros / 8` is the first such byte.
#[inline]
fn special(w: u64) -> u64 {
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let quote = has_zero(w ^ (ONES * b'"' as u64));
    let backslash = has_zero(w ^ (ONES * b'\\' as u64));
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    quote | backslash | control
}

/// Sixteen bytes at a time (SSE2, always present on x86-64): bit i set when byte i is `"`,
/// `\` or a control character.
#[cfg(target_arch = "x86_64")]
#[inline]
fn special16(chunk: &[u8]) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set_epi64x, _mm_set1_epi8,
    };
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&chunk[at..at + 8]);
        i64::from_le_bytes(w)
    };
    let (lo, hi) = (word(0), word(8));
    // SAFETY: SSE2 is part of the x86-64 baseline (every x86-64 CPU has it, and Rust's
    // x86-64 targets enable it); these intrinsics only compute on register values.
    unsafe {
        let v = _mm_set_epi64x(hi, lo);
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // Unsigned byte < 0x20 ⇔ min(byte, 0x1f) == byte.
        let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
    }
}

/// The index of the first `"`, `\` or control character in `b` at or after `i` (or `b.len()`).
#[inline]
fn skip_plain(b: &[u8], mut i: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    while let Some(chunk) = b.get(i..i + 16) {
        let m = special16(chunk);
        if m != 0 {
            return i + m.trailing_zeros() as usize;
        }
        i += 16;
    }
    while let Some(chunk) = b.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let flags = special(u64::from_le_bytes(w));
        if flags != 0 {
            return i + (flags.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return i;
        }
        i += 1;
    }
    i
}

impl<'a> Scanner<'a> {
    pub fn new(s: &'a str) -> Self {
        Scanner { s, b: s.as_bytes(), i: 0, depth: 0 }
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    #[inline]
    pub fn peek(&mut self) -> Scan<u8> {
        self.ws();
        self.b.get(self.i).copied().ok_or(Declined)
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Scan<()> {
        if self.peek()? == c {
            self.i += 1;
            Ok(())
        } else {
            Err(Declined)
        }
    }

    /// The cursor's byte offset.
    pub fn pos(&self) -> usize {
        self.i
    }

    /// The text from `start` to the cursor.
    pub fn since(&self, start: usize) -> &'a str {
        &self.s[start..self.i]
    }

    /// After the whole value: only whitespace may follow.
    pub fn end(&mut self) -> Scan<()> {
        self.ws();
        if self.i == self.b.len() { Ok(()) } else { Err(Declined) }
    }

    /// A string at the cursor (which is on its opening quote): raw content, escaped?
    fn string_raw(&mut self) -> Scan<(&'a str, bool)> {
        let b = self.b;
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            self.i = skip_plain(b, self.i);
            match *b.get(self.i).ok_or(Declined)? {
                b'"' => {
                    let raw = &self.s[start..self.i];
                    self.i += 1;
                    return Ok((raw, escaped));
                }
                b'\\' => {
                    escaped = true;
                    match b.get(self.i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 2,
                        Some(b'u') => {
                            let hex = b.get(self.i + 2..self.i + 6).ok_or(Declined)?;
                            let mut v = 0u32;
                            for &h in hex {
                                v = v * 16 + (h as char).to_digit(16).ok_or(Declined)?;
                            }
                            if (0xD800..=0xDFFF).contains(&v) {
                                return Err(Declined); // surrogates: serde's rules
                            }
                            self.i += 6;
                        }
                        _ => return Err(Declined),
                    }
                }
                0..=0x1f => return Err(Declined),
                _ => self.i += 1,
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.b.get(self.i) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Scan<&'a str> {
        let start = self.i;
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.b.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(Declined),
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(Declined);
            }
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(Declined);
            }
        }
        Ok(&self.s[start..self.i])
    }

    fn literal(&mut self, word: &[u8]) -> Scan<()> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Declined)
        }
    }

    /// The next value as a token (objects and arrays validated and skipped).
    pub fn token(&mut self) -> Scan<Token<'a>> {
        Ok(match self.peek()? {
            b'"' => {
                let (raw, escaped) = self.string_raw()?;
                Token::Str { raw, escaped }
            }
            b'{' => {
                self.object(|sc, _| sc.skip())?;
                Token::Nested
            }
            b'[' => {
                self.array()?;
                Token::Nested
            }
            b't' => self.literal(b"true").map(|_| Token::Bool(true))?,
            b'f' => self.literal(b"false").map(|_| Token::Bool(false))?,
            b'n' => self.literal(b"null").map(|_| Token::Null)?,
            _ => Token::Num(self.number()?),
        })
    }

    /// Validates and skips the next value.
    pub fn skip(&mut self) -> Scan<()> {
        self.token().map(|_| ())
    }

    /// The next value's text as written (what serde's `RawValue` holds); `None` for `null`.
    pub fn raw(&mut self) -> Scan<Option<&'a str>> {
        self.ws();
        let start = self.i;
        Ok(match self.token()? {
            Token::Null => None,
            _ => Some(&self.s[start..self.i]),
        })
    }

    fn nest(&mut self) -> Scan<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH { Err(Declined) } else { Ok(()) }
    }

    fn array(&mut self) -> Scan<()> {
        self.eat(b'[')?;
        self.nest()?;
        if self.peek()? == b']' {
            self.i += 1;
        } else {
            loop {
                self.skip()?;
                match self.peek()? {
                    b',' => self.i += 1,
                    b']' => {
                        self.i += 1;
                        break;
                    }
                    _ => return Err(Declined),
                }
            }
        }
        self.depth -= 1;
        Ok(())
    }

    /// Walks an object: `member` gets each key (unescaped keys only; an escaped key
    /// declines) and must consume its value.
    pub fn object(&mut self, mut member: impl FnMut(&mut Self, &'a str) -> Scan<()>) -> Scan<()> {
        self.eat(b'{')?;
        self.nest()?;
        if self.peek()? == b'}' {
            self.i += 1;
        } else {
            loop {
                if self.peek()? != b'"' {
                    return Err(Declined);
                }
                let (key, escaped) = self.string_raw()?;
                if escaped {
                    return Err(Declined);
                }
                self.eat(b':')?;
                member(self, key)?;
                match self.peek()? {
                    b',' => self.i += 1,
                    b'}' => {
                        self.i += 1;
                        break;
                    }
                    _ => return Err(Declined),
                }
            }
        }
        self.depth -= 1;
        Ok(())
    }

    /// A string or `null` (another type declines: serde reports it).
    pub fn opt_string(&mut self) -> Scan<Option<Cow<'a, str>>> {
        match self.token()? {
            Token::Null => Ok(None),
            t @ Token::Str { .. } => t.string().map(Some).ok_or(Declined),
            _ => Err(Declined),
        }
    }
}

/// Sets `slot` once; a second occurrence of the key declines (serde rejects duplicate fields).
pub(crate) fn once<T>(slot: &mut Option<T>, seen: &mut bool, v: Option<T>) -> Scan<()> {
    if std::mem::replace(seen, true) {
        return Err(Declined);
    }
    *slot = v;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(s: &str) -> bool {
        let mut sc = Scanner::new(s);
        sc.skip().and_then(|_| sc.end()).is_ok()
    }

    #[test]
    fn accepts_only_what_serde_accepts() {
        let cases = [
            r#"{"a":[1,-2.5e+3,true,false,null,{"b":"c\"\u00e9\n"}],"d":{}}"#,
            r#"  {"x" : "héllo wörld, a longer string with ünïcode" , "y":[ ] } "#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":1e}"#,
            r#"{"a":tru}"#,
            r#"{"a":"x\q"}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":1,}"#,
            r#"{"a":1}x"#,
            r#"[1,2,]"#,
            r#"{"a" 1}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":-}"#,
            r#""unterminated"#,
            r#"{"a":"12345678901234567890\"12345678"}"#,
        ];
        for c in cases {
            let serde_ok = serde_json::from_str::<serde::de::IgnoredAny>(c).is_ok();
            if valid(c) {
                assert!(serde_ok, "scanner accepted what serde rejects: {c}");
            }
            if serde_ok && !c.contains("\\ud800") {
                assert!(valid(c), "scanner declined valid JSON: {c}");
            }
        }
    }

    #[test]
    fn special_bytes_are_found_in_words() {
        for pos in 0..8 {
            for byte in [b'"', b'\\', 0u8, 0x1f] {
                let mut w = [b'a'; 8];
                w[pos] = byte;
                let flags = special(u64::from_le_bytes(w));
                assert_eq!(flags.trailing_zeros() / 8, pos as u32, "{byte} at {pos}");
            }
        }
        assert_eq!(special(u64::from_le_bytes(*b"abc \xc3\xa9~!")), 0);
        // The lowest flag is exact with several special bytes.
        assert_eq!(special(u64::from_le_bytes(*b"ab\x01\"\\\"x\x00")).trailing_zeros() / 8, 2);
    }

    #[test]
    fn skip_plain_finds_the_first_special_byte() {
        let alphabet = b"abcdefgh \xc3\xa9~!\"\\\x00\x1f\n";
        let mut state = 12345u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        for len in 0..70 {
            for _ in 0..20 {
                // Mostly plain bytes, now and then a special one, anywhere.
                let b: Vec<u8> =
                    (0..len).map(|_| alphabet[if next() % 16 == 0 { next() % 17 } else { next() % 12 }]).collect();
                for start in 0..=len.min(9) {
                    let want =
                        b[start..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20).map_or(len, |p| p + start);
                    assert_eq!(skip_plain(&b, start), want, "{b:?} from {start}");
                }
            }
        }
    }

    #[test]
    fn deep_nesting_declines() {
        let deep = "[".repeat(150) + &"]".repeat(150);
        assert!(!valid(&deep));
    }
}
