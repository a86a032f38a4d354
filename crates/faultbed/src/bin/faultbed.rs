//! `faultbed`: runs fault scenarios and the seeded soak, prints a markdown
//! results table (also written to `--out`). Exit code 1 when any run failed.
//! The documented entry point is `scripts/faults.sh`.

use std::io::Write;

use anyhow::{bail, Context};
use clap::Parser;
use pgwarden_faultbed::bed::reap_leftovers;
use pgwarden_faultbed::scenario::{
    run_scenario, run_soak, scenario, Mode, RunOptions, SCENARIOS, TABLE_HEADER,
};

#[derive(Parser, Debug)]
#[command(about = "Run pgwarden fault-injection scenarios")]
struct Args {
    /// Comma-separated scenario ids (default: all of F01-F20); `ci` = the CI subset.
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Comma-separated modes: async, sync.
    #[arg(long, value_delimiter = ',', default_value = "async,sync")]
    modes: Vec<Mode>,
    /// Seed for the scenarios' own randomness (restart order, flapping).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also run the randomized soak with this seed (printed, so a failure can be replayed).
    #[arg(long)]
    soak_seed: Option<u64>,
    /// Faults in the soak.
    #[arg(long, default_value_t = 8)]
    soak_steps: usize,
    /// Run only the soak, no matrix.
    #[arg(long)]
    soak_only: bool,
    /// Keep artifacts of passing runs too.
    #[arg(long)]
    keep_artifacts: bool,
    /// Append the table to this file as well.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,pgwarden_faultbed=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let reaped = reap_leftovers();
    if !reaped.is_empty() {
        eprintln!("reaped leftovers of earlier runs: {reaped:?}");
    }
    let mut ids: Vec<String> = Vec::new();
    if !args.soak_only {
        if args.scenarios.is_empty() {
            ids = SCENARIOS.iter().map(|s| s.id.to_string()).collect();
        } else {
            for s in &args.scenarios {
                if s == "ci" {
                    ids.extend(SCENARIOS.iter().filter(|s| s.ci).map(|s| s.id.to_string()));
                } else if let Some(sc) = scenario(s) {
                    ids.push(sc.id.to_string());
                } else {
                    bail!("unknown scenario {s}");
                }
            }
        }
    }
    let opts = RunOptions {
        keep_artifacts: args.keep_artifacts,
        soak_steps: args.soak_steps,
        ..RunOptions::default()
    };
    let mut rows = Vec::new();
    let mut failed = 0;
    let emit = |line: String, rows: &mut Vec<String>| {
        println!("{line}");
        rows.push(line);
    };
    println!("{TABLE_HEADER}");
    for id in &ids {
        for mode in &args.modes {
            let r = run_scenario(id, *mode, args.seed, &opts);
            if r.skipped.is_none() && !r.passed {
                failed += 1;
            }
            emit(r.row(), &mut rows);
        }
    }
    if let Some(seed) = args.soak_seed {
        for mode in &args.modes {
            eprintln!("soak: mode {mode}, seed {seed}, {} steps", args.soak_steps);
            let r = run_soak(*mode, seed, &opts);
            if !r.passed {
                failed += 1;
            }
            emit(r.row(), &mut rows);
        }
    }
    if let Some(out) = &args.out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .with_context(|| format!("open {}", out.display()))?;
        writeln!(f, "{TABLE_HEADER}")?;
        for r in &rows {
            writeln!(f, "{r}")?;
        }
    }
    if failed > 0 {
        eprintln!("{failed} run(s) failed");
        std::process::exit(1);
    }
    Ok(())
}
