//! `eventide gen`: realistic e-commerce events into Redis.

use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use eventide::config::Dur;
use eventide::generator::{GenOptions, Generator, publish};

#[derive(Args, Debug)]
pub struct GenArgs {
    #[arg(long, env = "EVENTIDE_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    #[arg(long, default_value = "events")]
    pub stream: String,
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
        ..GenOptions::default()
    };
    let client = redis::Client::open(a.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let t = Instant::now();
    let p = publish(&mut conn, &a.stream, Generator::new(opts), 1000, a.rate).await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "wrote {} entries to {} in {:.1}s ({:.0}/s): {} events, {} duplicates, {} malformed",
        p.entries,
        a.stream,
        secs,
        p.entries as f64 / secs.max(1e-9),
        p.events,
        p.duplicates,
        p.malformed
    );
    Ok(ExitCode::SUCCESS)
}
