//! `kokoa-control`: parses flags and calls the library ([`kokoa_control::cli`]).

fn main() -> std::process::ExitCode {
    kokoa_control::cli::main()
}
