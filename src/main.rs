//! The `eventide` binary: parses the command line, sets up logging, maps errors to exit
//! codes. Only this file knows about signals.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: the archive's buffers grow and shrink constantly; glibc malloc returned them to
/// the kernel and faulted them back in (~15% of CPU in profiles).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    no_transparent_huge_pages();
    open_files_up_to_the_hard_limit();
    let args = cli::Cli::parse();
    init_logging(&args);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args, shutdown_signal())) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logging to stderr: the filter of `--log`, else `EVENTIDE_LOG`, else `RUST_LOG`, else
/// `info` (one that does not parse falls back to `info`, with a line saying so); text or JSON
/// lines (`--log-format`).
fn init_logging(args: &cli::Cli) {
    let wanted =
        args.log.clone().or_else(|| std::env::var("EVENTIDE_LOG").ok()).or_else(|| std::env::var("RUST_LOG").ok());
    // The Delta libraries log every snapshot load at info: warnings only, unless asked for.
    const DEFAULT: &str = "info,deltalake_core=warn,buoyant_kernel=warn,buoyant_kernel_engine=warn";
    let (filter, bad) = match tracing_subscriber::EnvFilter::try_new(wanted.as_deref().unwrap_or(DEFAULT)) {
        Ok(f) => (f, None),
        Err(e) => (tracing_subscriber::EnvFilter::new(DEFAULT), Some(e)),
    };
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr);
    match args.log_format {
        cli::LogFormat::Text => fmt.init(),
        cli::LogFormat::Json => fmt.json().flatten_event(true).init(),
    }
    if let Some(e) = bad {
        tracing::warn!(filter = wanted.unwrap_or_default(), error = %e, "The log filter does not parse; logging at info.");
    }
}

/// Transparent huge pages off for this process: every fault of a fresh 2 MiB page zeroes
/// all of it, which made the replay's system time vary from 0.15 s to over 1 s between
/// identical runs (BENCHMARKS.md); with 4 KiB pages it is a steady ~0.2 s and RSS is 25% lower.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process's memory map; no pointers.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// The soft open-files limit raised to the hard one (as Go and the JVM do): the HTTP server's
/// connection cap, Redis connections and Parquet files share it; the cap, not the limit, is
/// what bounds the server.
fn open_files_up_to_the_hard_limit() {
    #[cfg(target_os = "linux")]
    // SAFETY: getrlimit/setrlimit on a local struct; no other memory is touched.
    unsafe {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// Completes on SIGINT or SIGTERM (the run then stops reading, checkpoints, acks and exits);
/// a second signal exits at once (the last committed checkpoint is where a restart resumes).
async fn shutdown_signal() {
    one_signal().await;
    tokio::spawn(async {
        one_signal().await;
        eprintln!("second signal: exiting without the final checkpoint");
        std::process::exit(130);
    });
}

async fn one_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
