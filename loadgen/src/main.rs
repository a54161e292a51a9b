//! The `loadgen` binary: parses flags (and a scenario file), runs the load (or the capacity
//! search), prints the summary, writes the JSON and HTML reports, and maps the outcome to an exit
//! code. `loadgen merge` reads the reports of several machines' runs instead and does the same
//! with their merged report.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use loadgen::config::{Command, MergeArgs};
use loadgen::stats::Live;
use loadgen::{Args, Report, Scenario};

/// Every gate held.
const OK: u8 = 0;
/// A gate was violated.
const VIOLATED: u8 = 1;
/// Bad flags or a setup failure.
const SETUP: u8 = 2;

fn main() -> ExitCode {
    let matches = Args::command().get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    if let Some(Command::Merge(merge)) = &args.command {
        return exit_code(merge_reports(merge));
    }
    // A scenario file's groups, or the one group the flags describe.
    let groups = match &args.scenario {
        Some(path) => {
            loadgen::scenario_file::load(path, &args, |id| loadgen::config::given(&matches, id))
                .map_err(anyhow::Error::from)
        }
        None => args
            .to_scenario()
            .map(|s| vec![s])
            .map_err(anyhow::Error::from),
    };
    let groups = match groups {
        Ok(groups) => groups,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(SETUP);
        }
    };
    exit_code(execute(&groups, &args))
}

/// 0 when every gate held, 1 when one was violated, 2 (with the error printed) when there was no
/// verdict to give.
fn exit_code(outcome: anyhow::Result<bool>) -> ExitCode {
    match outcome {
        Ok(true) => ExitCode::from(OK),
        Ok(false) => ExitCode::from(VIOLATED),
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::from(SETUP)
        }
    }
}

/// `loadgen merge`: reads the reports, merges them, prints the summary and writes the merged
/// JSON and HTML if asked; `Ok(passed)`.
fn merge_reports(args: &MergeArgs) -> anyhow::Result<bool> {
    let reports = args
        .reports
        .iter()
        .map(|path| read_report(path))
        .collect::<anyhow::Result<Vec<Report>>>()?;
    let merged = loadgen::merge(&reports).map_err(|e| {
        let file = e.report().and_then(|i| args.reports.get(i));
        let context = match file {
            Some(path) => format!("cannot merge {}", path.display()),
            None => "cannot merge".to_owned(),
        };
        anyhow::Error::new(e).context(context)
    })?;
    print!("{}", merged.render());
    if let Some(path) = &args.json {
        write(path, &serde_json::to_string_pretty(&merged)?)?;
    }
    if let Some(path) = &args.html {
        write(path, &loadgen::html::render(&merged))?;
    }
    Ok(merged.passed)
}

fn read_report(path: &Path) -> anyhow::Result<Report> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a loadgen run report (one written by `loadgen --json`, with \
             `histograms`; capacity searches and older reports cannot be merged)",
            path.display()
        )
    })
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Runs and reports; `Ok(passed)`. A capacity search passes when at least one round held.
fn execute(groups: &[Scenario], args: &Args) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("loadgen")
        .build()
        .context("starting the tokio runtime")?;
    let (json, html, passed) = runtime.block_on(async {
        // Live counters outlive a round, so `--metrics-listen` serves the whole search.
        let live = Arc::new(Live::default());
        if let Some(address) = args.metrics_listen {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("binding --metrics-listen {address}"))?;
            tokio::spawn(loadgen::exporter::serve(listener, live.clone()));
        }
        if let [scenario] = groups
            && scenario.find_max.is_some()
        {
            let capacity = loadgen::find_max_with(scenario, &live, |round| {
                eprintln!(
                    "round: {} rooms, {} clients: {}",
                    round.rooms,
                    round.clients,
                    if round.passed { "pass" } else { "FAIL" }
                );
            })
            .await?;
            print!("{}", capacity.render());
            let json = serde_json::to_string_pretty(&capacity)?;
            // The page charts one run: the last round, the one that found the limit.
            let html = capacity
                .rounds
                .last()
                .filter(|_| args.html.is_some())
                .map(|round| loadgen::html::render(&round.report));
            anyhow::Ok((json, html, capacity.max_rooms.is_some()))
        } else {
            let report = loadgen::run_scenario_with(groups, live).await?;
            print!("{}", report.render());
            let json = serde_json::to_string_pretty(&report)?;
            let html = args.html.as_ref().map(|_| loadgen::html::render(&report));
            anyhow::Ok((json, html, report.passed))
        }
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    if let Some(path) = &args.json {
        write(path, &json)?;
    }
    if let (Some(path), Some(html)) = (&args.html, html) {
        write(path, &html)?;
    }
    Ok(passed)
}
