//! Command-line subcommands that do not run the controller.

pub mod evaluate;
pub mod load;
pub mod report;
