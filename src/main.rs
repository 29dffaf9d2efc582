//! The `secmetrics` binary: controller, CRD printer, offline evaluation, reports.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "secmetrics", version, about = "Application security metrics as Kubernetes resources")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    Run(secmetrics::controller::RunArgs),
    /// Print the CustomResourceDefinitions (the checked-in crds/ must equal this output).
    Crds,
    /// Evaluate SecurityMetrics against manifests or a cluster dump, offline.
    ///
    /// Exit code 0: all Compliant or Warning; 1: any Breached or Unknown; 2: invalid input.
    Evaluate(secmetrics::cli::evaluate::Args),
    /// Write an auditor's report (Markdown, HTML, JSON, CSV or OSCAL assessment-results) of the
    /// SecurityMetrics and MetricPolicies in the cluster, or in files with -f.
    ///
    /// The same input gives byte-identical output (the report's time is --at or the newest
    /// lastEvaluated). Exit code 1 when the input cannot be read.
    Report(secmetrics::cli::report::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => match secmetrics::api::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Evaluate(args) => match secmetrics::cli::evaluate::run(&args, &mut std::io::stdout().lock())
        {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Report(args) => match secmetrics::cli::report::run(&args, &mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                // CEL's bounded recursion is measured against this stack (engine::expression).
                .thread_stack_size(secmetrics::engine::expression::EVALUATION_STACK)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(secmetrics::controller::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
