//! The `loadgen` binary: parses flags, runs the scenario (or the capacity search), prints the
//! summary, writes the JSON report, and maps the outcome to an exit code.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use loadgen::{Args, Scenario};

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
    match execute(&groups, args.json.as_deref()) {
        Ok(true) => ExitCode::from(OK),
        Ok(false) => ExitCode::from(VIOLATED),
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::from(SETUP)
        }
    }
}

/// Runs and reports; `Ok(passed)`. A capacity search passes when at least one round held.
fn execute(groups: &[Scenario], json_path: Option<&Path>) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("loadgen")
        .build()
        .context("starting the tokio runtime")?;
    let (json, passed) = runtime.block_on(async {
        if let [scenario] = groups
            && scenario.find_max.is_some()
        {
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
            anyhow::Ok((json, capacity.max_rooms.is_some()))
        } else {
            let report = loadgen::run_scenario(groups).await?;
            print!("{}", report.render());
            let json = serde_json::to_string_pretty(&report)?;
            anyhow::Ok((json, report.passed))
        }
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    if let Some(path) = json_path {
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(passed)
}
