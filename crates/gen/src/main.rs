//! `phygate-gen OUT_DIR`: writes what the .deb ships besides the binary, rendered from the
//! command line's own definition (`phygate::cli::Cli`) so they cannot drift from `--help`:
//!
//! - `OUT_DIR/man/phygate.1` and one page per subcommand (`phygate-token-mint.1`, …), roff;
//! - `OUT_DIR/completions/phygate.bash`, `_phygate` (zsh), `phygate.fish`.
//!
//! cargo-deb installs both (`[package.metadata.deb] assets` in the root Cargo.toml) and gzips
//! the man pages itself, as Debian policy 12.1 asks.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        bail!("usage: phygate-gen OUT_DIR");
    };
    let out = PathBuf::from(out);
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    let mut cmd = phygate::cli::Cli::command();
    // Pages for the command and every subcommand, named git-style (phygate-token-mint.1).
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("writing man pages to {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "phygate", &completions)
            .with_context(|| format!("writing {shell} completions"))?;
    }
    println!("{}", out.display());
    Ok(())
}
