//! Command-line tools beyond `run`: token and card-hash helpers, and how every command writes
//! to standard output.

pub mod token;

use std::fmt;
use std::io::{self, Write};

/// Writes to standard output and flushes. A closed pipe is success: `phygate status | head -1`
/// or `phygate check-config x.toml | less` quit before reading everything, and that is the
/// reader's choice, not a failure (`println!` would panic there). Other errors (a full disk
/// behind a redirect) are returned.
pub fn write_stdout(args: fmt::Arguments<'_>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// `print!` through [`write_stdout`]: returns `io::Result<()>`, never panics on a closed pipe.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

/// `println!` through [`write_stdout`]: returns `io::Result<()>`, never panics on a closed pipe.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}
