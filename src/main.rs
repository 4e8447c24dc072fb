#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    palisade::cli::main()
}
