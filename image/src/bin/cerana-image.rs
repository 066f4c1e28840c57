//! `cerana-image build --profile base`: see image/README.md.

use std::path::PathBuf;

use anyhow::Context;
use cerana_image::build::{build, BuildOptions, Compression};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build the CeranaOS image (kernel + initramfs) from Debian packages and this workspace")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build one profile into $OUT_DIR/image/<profile>/.
    Build {
        #[arg(long, default_value = "base")]
        profile: String,
        /// The checkout holding image/manifest.toml.
        #[arg(long, default_value = ".")]
        workspace: PathBuf,
        #[arg(long, env = "OUT_DIR", default_value = "out")]
        out_dir: PathBuf,
        #[arg(long, env = "CACHE_DIR", default_value = "/var/cache/cerana")]
        cache_dir: PathBuf,
        /// Timestamp given to every file in the archive.
        #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
        source_date_epoch: u32,
        #[arg(long, value_enum, default_value = "zstd")]
        compression: Compression,
        /// Use the binaries already built instead of running cargo.
        #[arg(long)]
        no_cargo: bool,
        /// Use this file as /init instead of building the manifest's init binary.
        #[arg(long)]
        init: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Build { profile, workspace, out_dir, cache_dir, source_date_epoch, compression, no_cargo, init } => {
            let workspace = workspace.canonicalize().context("workspace directory")?;
            let out_dir = if out_dir.is_absolute() { out_dir } else { workspace.join(out_dir) };
            let opts = BuildOptions {
                workspace,
                profile,
                out_dir,
                cache_dir,
                source_date_epoch,
                compression,
                no_cargo,
                init_binary: init,
            };
            let report = build(&opts)?;
            println!("{}", report.dir.display());
        }
    }
    Ok(())
}
