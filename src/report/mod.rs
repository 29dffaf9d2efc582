//! `secmetrics report`: SecurityMetrics and MetricPolicies → an auditor's report.
//!
//! [`model::build`] turns the resources into a sorted [`model::Report`] (pure, no client);
//! one module per format renders it. The same input always gives byte-identical output.

pub mod csv;
pub mod html;
pub mod json;
pub mod markdown;
pub mod model;
pub mod oscal;
pub mod svg;
pub mod uuid;

pub use model::{Options, Report, build};

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Markdown,
    Html,
    Json,
    Csv,
    Oscal,
}

/// Renders `report` in `format`.
pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Markdown => markdown::render(report),
        Format::Html => html::render(report),
        Format::Json => json::render(report),
        Format::Csv => csv::render(report),
        Format::Oscal => oscal::render(report),
    }
}
