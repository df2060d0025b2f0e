//! `eventide gen`: realistic e-commerce events into Redis, or into a JSON-lines file (`--out`).

use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use eventide::config::Dur;
use eventide::generator::{GenOptions, Generator, publish_sharded};

#[derive(Args, Debug)]
pub struct GenArgs {
    #[arg(long, env = "EVENTIDE_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    #[arg(long, default_value = "events")]
    pub stream: String,
    /// Shards of the stream: each event goes to `<stream>:{k}` with k = xxh3_64(event_id) mod N
    /// (1: the key `<stream>`).
    #[arg(long, env = "EVENTIDE_SHARDS", default_value_t = 1)]
    pub shards: u32,
    /// Entries to write (events, duplicates and malformed ones together).
    #[arg(long, default_value_t = 10_000)]
    pub events: u64,
    /// Entries per second (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Share of duplicates (re-sent earlier events), e.g. 0.05.
    #[arg(long, default_value_t = 0.0)]
    pub duplicates: f64,
    /// Out-of-order timestamps: each moved back by up to this, e.g. 5s.
    #[arg(long, default_value = "0s")]
    pub jitter: Dur,
    /// Share of malformed entries (cycling through every rejection class), e.g. 0.005.
    #[arg(long, default_value_t = 0.0)]
    pub malformed: f64,
    /// Wrap events as Dapr pub/sub does (CloudEvents envelope).
    #[arg(long)]
    pub dapr: bool,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Event-time spacing between events (their times end near now).
    #[arg(long, default_value = "1ms")]
    pub spacing: Dur,
    /// Stamp each event with the time it is made, as a live service does (with `--rate`:
    /// event times follow the clock); `--spacing` is then not used.
    #[arg(long)]
    pub live_times: bool,
    /// Write the events' JSON to this file, one per line, instead of Redis (input for
    /// `eventide replay`; Dapr envelopes and malformed entries are written as they are).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

pub async fn run(a: GenArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&(a.duplicates + a.malformed)),
        "--duplicates + --malformed must be within 0..1"
    );
    let spacing_us = a.spacing.0.as_micros() as i64;
    let start_us = chrono::Utc::now().timestamp_micros() - a.events as i64 * spacing_us;
    let opts = GenOptions {
        entries: a.events,
        duplicates: a.duplicates,
        malformed: a.malformed,
        jitter: a.jitter.0,
        dapr: a.dapr,
        seed: a.seed,
        start_us,
        spacing_us,
        live_times: a.live_times,
        ..GenOptions::default()
    };
    if let Some(path) = &a.out {
        return write_jsonl(path, opts);
    }
    let client = redis::Client::open(a.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let t = Instant::now();
    anyhow::ensure!((1..=4096).contains(&a.shards), "--shards must be within 1..=4096");
    let p = publish_sharded(&mut conn, &a.stream, a.shards, Generator::new(opts), 1000, a.rate).await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "wrote {} entries to {}{} in {:.1}s ({:.0}/s): {} events, {} duplicates, {} malformed",
        p.entries,
        a.stream,
        if a.shards > 1 { format!(" ({} shards)", a.shards) } else { String::new() },
        secs,
        p.entries as f64 / secs.max(1e-9),
        p.events,
        p.duplicates,
        p.malformed
    );
    Ok(ExitCode::SUCCESS)
}

fn write_jsonl(path: &std::path::Path, opts: GenOptions) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let t = Instant::now();
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let (mut n, mut bytes) = (0u64, 0u64);
    for e in Generator::new(opts) {
        // An entry without a `data` field (a malformed class) has no JSON to write.
        let Some((_, body)) = e.fields.iter().find(|(k, _)| *k == "data") else { continue };
        if body.contains(&b'\n') {
            continue;
        }
        w.write_all(body)?;
        w.write_all(b"\n")?;
        n += 1;
        bytes += body.len() as u64 + 1;
    }
    w.flush()?;
    println!("wrote {n} lines ({bytes} bytes) to {} in {:.1}s", path.display(), t.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}
