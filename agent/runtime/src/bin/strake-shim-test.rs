//! A minimal multi-call binary for this crate's integration tests: `strake-shim-test shim <args>`
//! behaves like `strake shim <args>`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.split_first() {
        Some((cmd, rest)) if cmd == "shim" => strake_runtime::shim::main(rest),
        _ => {
            eprintln!("usage: strake-shim-test shim <run|delete> ...");
            ExitCode::from(2)
        }
    }
}
