//! Names made safe for object paths (a leaf: imports nothing of the crate).

/// A name safe to use in a file name: ASCII letters, digits, `-` and `_`; others become `_`.
pub fn sanitize_name(name: &str) -> String {
    let s: String = name
        .chars()
        .take(64)
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    if s.is_empty() { "w".into() } else { s }
}
