//! Builds vmlinuz + initramfs.zst + manifest.json from a static strake binary.
//!
//! Usage: `cargo run -p strake-image --example build_image -- <strake-binary> <out-dir> [cache-dir] [extra-module...]`
//! The cache directory defaults to `<repo>/.cache/kernel`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [strake, out, rest @ ..] = args.as_slice() else {
        eprintln!("usage: build_image <strake-binary> <out-dir> [cache-dir] [extra-module...]");
        return ExitCode::from(2);
    };
    let (cache_dir, extra_modules) = match rest {
        [cache, extra @ ..] => (PathBuf::from(cache), extra.to_vec()),
        [] => (
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/kernel"),
            Vec::new(),
        ),
    };
    let opts = strake_image::BuildOptions {
        strake_binary: PathBuf::from(strake),
        cache_dir,
        out_dir: PathBuf::from(out),
        extra_modules,
    };
    match strake_image::build(&opts) {
        Ok(artifacts) => {
            println!("kernel {}", artifacts.kernel_version);
            println!("{}", artifacts.vmlinuz.display());
            println!("{}", artifacts.initramfs.display());
            println!("{}", artifacts.manifest.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("image build failed: {err}");
            ExitCode::FAILURE
        }
    }
}
