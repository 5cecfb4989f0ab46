//! The `keygate` command.

fn main() {
    std::process::exit(keygate_gateway::cli::main());
}
