//! `keygate config check|example`.

use std::path::PathBuf;

use clap::Subcommand;

use super::{EXIT_OK, EXIT_USAGE};
use crate::config::{Config, EXAMPLE};

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// List every problem of a configuration file (with KEYGATE_... variables applied); exit 64 if there is one.
    Check {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Print a commented configuration file with every option at its default.
    Example,
}

pub fn run(command: ConfigCommand) -> i32 {
    match command {
        ConfigCommand::Example => {
            print!("{EXAMPLE}");
            EXIT_OK
        }
        ConfigCommand::Check { file } => {
            let config = match Config::read_with_env(&file, std::env::vars()) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_USAGE;
                }
            };
            let problems = config.problems();
            if problems.is_empty() {
                println!("{} is valid", file.display());
                return EXIT_OK;
            }
            for problem in &problems {
                eprintln!("error: {problem}");
            }
            eprintln!("{}: {} problem(s)", file.display(), problems.len());
            EXIT_USAGE
        }
    }
}
