//! The `spark` binary: the built-in sources and handlers, and the CLI.

fn main() -> std::process::ExitCode {
    spark::run_cli(spark::Registry::with_builtins())
}
