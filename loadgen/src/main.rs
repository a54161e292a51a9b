//! The `loadgen` binary: parses flags, runs the scenario (or the capacity search), prints the
//! summary, writes the JSON (and HTML) report, and maps the outcome to an exit code.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use loadgen::{Args, Scenario};

/// Every gate held.
const OK: u8 = 0;
/// A gate was violated.
const VIOLATED: u8 = 1;
/// Bad flags or a setup failure.
const SETUP: u8 = 2;

fn main() -> ExitCode {
    let args = Args::parse();
    let scenario = match args.to_scenario() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(SETUP);
        }
    };
    match execute(&scenario, args.json.as_deref(), args.html.as_deref()) {
        Ok(true) => ExitCode::from(OK),
        Ok(false) => ExitCode::from(VIOLATED),
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::from(SETUP)
        }
    }
}

/// Runs and reports; `Ok(passed)`. A capacity search passes when at least one round held.
fn execute(
    scenario: &Scenario,
    json_path: Option<&Path>,
    html_path: Option<&Path>,
) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("loadgen")
        .build()
        .context("starting the tokio runtime")?;
    let (json, html, passed) = runtime.block_on(async {
        if scenario.find_max.is_some() {
            let capacity = loadgen::find_max(scenario, |round| {
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
                .filter(|_| html_path.is_some())
                .map(|round| loadgen::html::render(&round.report));
            anyhow::Ok((json, html, capacity.max_rooms.is_some()))
        } else {
            let report = loadgen::run(scenario).await?;
            print!("{}", report.render());
            let json = serde_json::to_string_pretty(&report)?;
            let html = html_path.map(|_| loadgen::html::render(&report));
            anyhow::Ok((json, html, report.passed))
        }
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    if let Some(path) = json_path {
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if let (Some(path), Some(html)) = (html_path, html) {
        std::fs::write(path, html).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(passed)
}
