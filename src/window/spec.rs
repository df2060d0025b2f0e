//! Pipeline files: `pipelines/<name>.toml`, one windowed aggregation each.
//!
//! ```toml
//! streams = ["orders"]            # optional: default every configured stream
//! event_types = ["order.*"]       # optional: exact types or `prefix.*` globs
//! window = { kind = "tumbling", size = "1m" }   # hopping: size + slide; session: gap
//! watermark = "5s"                # bounded out-of-orderness
//! allowed_lateness = "0s"
//! idle_timeout = "30s"            # live runs only: advance the watermark when streams go quiet
//! [fields]                        # typed columns taken from the event's data / metadata
//! amount = "double"               # shorthand for { path = "data.amount", type = "double" }
//! region = { path = "metadata.region", type = "string" }
//! sql = "SELECT event_type, count(*) AS events FROM events GROUP BY event_type"
//! ```
//! [`load_dir`] reads every file and reports each problem with the file, the line and the fix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::Dur;
use crate::events::PIPELINE_BASE;

/// Table names a pipeline may not take (the archive, the late table, internal state).
pub const RESERVED_NAMES: &[&str] = &["events", "late_events"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: Option<String>,
    description: Option<String>,
    #[serde(default)]
    streams: Vec<String>,
    #[serde(default)]
    event_types: Vec<String>,
    window: WindowFile,
    watermark: Option<Dur>,
    allowed_lateness: Option<Dur>,
    idle_timeout: Option<Dur>,
    #[serde(default)]
    emit: Emit,
    /// RFC 3339: the live run writes only windows starting at or after it (`eventide backfill`
    /// writes the earlier ones from the archive).
    live_from: Option<String>,
    #[serde(default)]
    fields: BTreeMap<String, FieldFile>,
    sql: toml::Spanned<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowFile {
    kind: String,
    size: Option<Dur>,
    slide: Option<Dur>,
    gap: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum FieldFile {
    Type(String),
    Full {
        path: Option<String>,
        #[serde(rename = "type")]
        ty: String,
    },
}

/// When window rows are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Emit {
    /// One row per window and group, when the watermark passes `end + allowed_lateness`.
    #[default]
    Final,
    /// For dashboards (tumbling and hopping windows): a window's rows are first written when
    /// the watermark passes its end (`revision` 0); each later change within the allowed
    /// lateness re-writes all of the window's rows with the next revision, at the next slide
    /// boundary the watermark crosses. The highest revision of a window is its current value.
    Updates,
}

/// A window shape; all durations in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Fixed, non-overlapping windows of `size`.
    Tumbling { size: i64 },
    /// Windows of `size` starting every `slide` (`size` a multiple of `slide`).
    Hopping { size: i64, slide: i64 },
    /// Per group key: events closer than `gap` form one session `[first, last + gap)`.
    Session { gap: i64 },
}

impl std::fmt::Display for WindowKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            WindowKind::Tumbling { size } => write!(f, "tumbling {}", fmt_us(size)),
            WindowKind::Hopping { size, slide } => write!(f, "hopping {} every {}", fmt_us(size), fmt_us(slide)),
            WindowKind::Session { gap } => write!(f, "session, gap {}", fmt_us(gap)),
        }
    }
}

/// Type of a declared field column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldType {
    String,
    Double,
    Int,
    Bool,
    /// RFC 3339 text → UTC microseconds.
    Timestamp,
}

impl FieldType {
    fn parse(s: &str) -> Option<FieldType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "string" | "utf8" | "text" | "varchar" => FieldType::String,
            "double" | "float" | "float64" | "decimal" => FieldType::Double,
            "int" | "integer" | "bigint" | "int64" | "long" => FieldType::Int,
            "bool" | "boolean" => FieldType::Bool,
            "timestamp" => FieldType::Timestamp,
            _ => return None,
        })
    }
}

/// A column taken from the event's JSON: `path` is `data.<a>[.<b>…]` or `metadata.<a>…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldSpec {
    pub name: String,
    pub path: Vec<String>,
    pub ty: FieldType,
}

/// One checked pipeline file.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    pub name: String,
    pub file: PathBuf,
    pub description: Option<String>,
    /// Streams read (empty: all).
    pub streams: Vec<String>,
    /// Event type filters (empty: all); `x.*` matches a prefix.
    pub event_types: Vec<String>,
    pub window: WindowKind,
    /// Bounded out-of-orderness (µs): watermark = max event time − this.
    pub watermark_us: i64,
    pub allowed_lateness_us: i64,
    pub idle_timeout: Duration,
    pub emit: Emit,
    /// The handover point (µs): a live run writes only windows starting at or after it;
    /// `eventide backfill` writes the earlier ones from the archive.
    pub live_from: Option<i64>,
    pub fields: Vec<FieldSpec>,
    pub sql: String,
    /// 1-based file line of the SQL text's first line (for error positions).
    pub sql_line: usize,
}

impl PipelineSpec {
    /// Whether an event of this stream and type is the pipeline's input.
    pub fn selects(&self, stream: &str, event_type: &str) -> bool {
        (self.streams.is_empty() || self.streams.iter().any(|s| s == stream))
            && (self.event_types.is_empty() || self.event_types.iter().any(|p| type_matches(p, event_type)))
    }
}

/// `order.*` matches `order.created`; anything else matches exactly.
pub fn type_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

/// A problem in a pipeline file: where and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for SpecProblem {}

/// 1-based line of byte `offset` in `text`.
pub fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// Parses and checks one pipeline file's text (not its SQL: see [`super::plan`]).
pub fn parse(text: &str, file: &Path) -> Result<PipelineSpec, Vec<SpecProblem>> {
    let problem = |line: Option<usize>, message: String| SpecProblem { file: file.to_path_buf(), line, message };
    let raw: File = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_at(text, s.start));
        vec![problem(line, e.message().trim().to_string())]
    })?;
    let line_of = |key: &str| crate::config::line_of(text, key);
    let mut problems = Vec::new();
    let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = raw.name.clone().unwrap_or(stem);
    if name.is_empty()
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        || name.as_bytes()[0].is_ascii_digit()
    {
        problems.push(problem(
            line_of("name"),
            format!(
                "pipeline name {name:?} must be letters, digits and `_`, not starting with a digit (it names a table)"
            ),
        ));
    }
    if RESERVED_NAMES.contains(&name.as_str()) {
        problems.push(problem(line_of("name"), format!("{name:?} is reserved (a lake table); choose another name")));
    }
    let us = |d: Dur| d.0.as_micros().min(i64::MAX as u128) as i64;
    let w = &raw.window;
    let wline = line_of("window").or_else(|| line_of("kind"));
    let need = |d: Option<Dur>, what: &str, problems: &mut Vec<SpecProblem>| match d {
        Some(d) if d.0 >= Duration::from_millis(1) => us(d),
        Some(_) => {
            problems.push(problem(wline, format!("window {what} must be at least 1ms")));
            1
        }
        None => {
            problems.push(problem(wline, format!("a {} window needs `{what}` (e.g. {what} = \"1m\")", w.kind)));
            1
        }
    };
    let unused = |d: Option<Dur>, what: &str, problems: &mut Vec<SpecProblem>| {
        if d.is_some() {
            problems.push(problem(wline, format!("`{what}` does not apply to a {} window; remove it", w.kind)));
        }
    };
    let window = match w.kind.as_str() {
        "tumbling" => {
            unused(w.slide, "slide", &mut problems);
            unused(w.gap, "gap", &mut problems);
            WindowKind::Tumbling { size: need(w.size, "size", &mut problems) }
        }
        "hopping" | "sliding" => {
            unused(w.gap, "gap", &mut problems);
            let size = need(w.size, "size", &mut problems);
            let slide = need(w.slide, "slide", &mut problems);
            if size % slide != 0 || slide > size {
                problems.push(problem(
                    wline,
                    format!(
                        "hopping window size must be a multiple of slide (size {}, slide {})",
                        fmt_us(size),
                        fmt_us(slide)
                    ),
                ));
            } else if size / slide > 1440 {
                problems
                    .push(problem(wline, "a hopping window may span at most 1440 slides; use a larger slide".into()));
            }
            WindowKind::Hopping { size, slide }
        }
        "session" => {
            unused(w.size, "size", &mut problems);
            unused(w.slide, "slide", &mut problems);
            WindowKind::Session { gap: need(w.gap, "gap", &mut problems) }
        }
        other => {
            problems.push(problem(wline, format!("unknown window kind {other:?}; use tumbling, hopping or session")));
            WindowKind::Tumbling { size: 60_000_000 }
        }
    };
    if raw.emit == Emit::Updates && matches!(window, WindowKind::Session { .. }) {
        problems.push(problem(
            line_of("emit"),
            "emit = \"updates\" works with tumbling and hopping windows; a session's bounds move as it grows, \
             so session windows are written once, when they close: use emit = \"final\""
                .into(),
        ));
    }
    let mut fields = Vec::new();
    for (fname, f) in &raw.fields {
        let fl = line_of(fname).or_else(|| line_of("fields"));
        let (path, ty) = match f {
            FieldFile::Type(t) => (format!("data.{fname}"), t.as_str()),
            FieldFile::Full { path, ty } => (path.clone().unwrap_or_else(|| format!("data.{fname}")), ty.as_str()),
        };
        let Some(ty) = FieldType::parse(ty) else {
            problems.push(problem(
                fl,
                format!("field `{fname}`: unknown type {ty:?}; use string, double, int, bool or timestamp"),
            ));
            continue;
        };
        let parts: Vec<String> = path.split('.').map(str::to_string).collect();
        if parts.len() < 2 || !matches!(parts[0].as_str(), "data" | "metadata") || parts.iter().any(|p| p.is_empty()) {
            problems.push(problem(
                fl,
                format!("field `{fname}`: path {path:?} must be data.<key>[.<key>…] or metadata.<key>[.<key>…]"),
            ));
            continue;
        }
        if PIPELINE_BASE.iter().any(|c| c.name() == fname) {
            problems.push(problem(fl, format!("field `{fname}` hides a built-in column of `events`; rename it")));
            continue;
        }
        fields.push(FieldSpec { name: fname.clone(), path: parts, ty });
    }
    for t in &raw.event_types {
        if t.is_empty() || t[..t.len() - 1].contains('*') {
            problems
                .push(problem(line_of("event_types"), format!("event type filter {t:?}: use a type or `prefix.*`")));
        }
    }
    let sql_span = raw.sql.span();
    let raw_sql = &text[sql_span.clone()];
    // A multi-line string's first newline is trimmed by TOML: the SQL starts on the next line.
    let skip = usize::from(raw_sql.starts_with("\"\"\"\n") || raw_sql.starts_with("'''\n"));
    let sql_line = line_at(text, sql_span.start) + skip;
    if raw.sql.get_ref().trim().is_empty() {
        problems.push(problem(Some(sql_line), "`sql` is empty; write a SELECT … FROM events GROUP BY …".into()));
    }
    let live_from = match raw.live_from.as_deref() {
        None => None,
        Some(t) => {
            let l = line_of("live_from");
            let step = match window {
                WindowKind::Tumbling { size } => Some(size),
                WindowKind::Hopping { slide, .. } => Some(slide),
                WindowKind::Session { .. } => None,
            };
            match (crate::decode::timestamp::parse_rfc3339_us(t), step) {
                (_, None) => {
                    problems.push(problem(l, "live_from works with tumbling and hopping windows (a session has no fixed start to hand over at)".into()));
                    None
                }
                (None, _) => {
                    problems.push(problem(l, format!("live_from {t:?}: expected RFC 3339, e.g. 2026-12-01T12:00:00Z")));
                    None
                }
                (Some(us), Some(step)) if us.rem_euclid(step) != 0 => {
                    problems.push(problem(
                        l,
                        format!("live_from {t:?} is not a window boundary: use a multiple of {}", fmt_us(step)),
                    ));
                    None
                }
                (Some(us), Some(_)) => Some(us),
            }
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(PipelineSpec {
        name,
        file: file.to_path_buf(),
        description: raw.description,
        streams: raw.streams,
        event_types: raw.event_types,
        window,
        watermark_us: raw.watermark.map_or(5_000_000, us),
        allowed_lateness_us: raw.allowed_lateness.map_or(0, us),
        idle_timeout: raw.idle_timeout.map_or(Duration::from_secs(30), |d| d.0),
        emit: raw.emit,
        live_from,
        fields,
        sql: raw.sql.into_inner(),
        sql_line,
    })
}

/// `90000000` → `1m30s`.
pub fn fmt_us(us: i64) -> String {
    Dur(Duration::from_micros(us.max(0) as u64)).to_string()
}

/// Reads every `*.toml` in `dir`, sorted by name: the files that parse, and the problems
/// of the others. A missing directory holds no pipelines.
pub fn load_dir(dir: &Path) -> (Vec<PipelineSpec>, Vec<SpecProblem>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Vec::new(), Vec::new()),
        Err(e) => {
            return (
                Vec::new(),
                vec![SpecProblem { file: dir.into(), line: None, message: format!("cannot read: {e}") }],
            );
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) => match parse(&text, &f) {
                Ok(spec) => out.push(spec),
                Err(p) => problems.extend(p),
            },
            Err(e) => problems.push(SpecProblem { file: f, line: None, message: format!("cannot read: {e}") }),
        }
    }
    let mut names = std::collections::HashMap::new();
    for s in &out {
        if let Some(prev) = names.insert(s.name.clone(), s.file.clone()) {
            problems.push(SpecProblem {
                file: s.file.clone(),
                line: None,
                message: format!("pipeline name {:?} is also used by {}; names must be unique", s.name, prev.display()),
            });
        }
    }
    (out, problems)
}
