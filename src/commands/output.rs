//! The commands' output on stdout. `neroman` leaves SIGPIPE ignored (Rust's default: a dead ssh
//! child must not kill the coming daemon), so a closed stdout (`neroman status | head`) shows up
//! as EPIPE. [`outln!`]/[`out!`] turn it into [`OutputError::Closed`], which `neroman` ends on
//! quietly with exit 0, where `println!` would panic.

use std::fmt;
use std::io::{self, Write};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Whoever read our output is gone: not a failure of the command.
    #[error("standard output is closed")]
    Closed,
    #[error("write to standard output")]
    Io(#[source] io::Error),
}

impl From<io::Error> for OutputError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            OutputError::Closed
        } else {
            OutputError::Io(e)
        }
    }
}

/// Whether an error ended a command only because its stdout was closed.
pub fn is_closed_stdout(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| matches!(c.downcast_ref::<OutputError>(), Some(OutputError::Closed)))
}

/// Write formatted text to `w`.
pub fn write_to(w: &mut impl Write, args: fmt::Arguments<'_>) -> Result<(), OutputError> {
    Ok(w.write_fmt(args)?)
}

/// Write formatted text to stdout.
pub fn print(args: fmt::Arguments<'_>) -> Result<(), OutputError> {
    write_to(&mut io::stdout().lock(), args)
}

/// Write bytes to `w` and flush (for output that streams, like `logs -f`).
pub fn write_bytes(w: &mut impl Write, bytes: &[u8]) -> Result<(), OutputError> {
    w.write_all(bytes)?;
    Ok(w.flush()?)
}

/// `print!` that returns `Result<(), OutputError>` instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::commands::output::print(format_args!($($arg)*))
    };
}

/// `println!` that returns `Result<(), OutputError>` instead of panicking.
macro_rules! outln {
    () => {
        $crate::commands::output::print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::commands::output::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};

#[cfg(test)]
mod tests {
    use super::*;

    /// With SIGPIPE ignored (as in `neroman`, and in this test process), writing to a pipe whose
    /// reader is gone is an error the caller sees, not a signal that kills the process.
    #[test]
    fn writing_into_a_closed_pipe_is_an_error_not_a_death() {
        let (reader, mut writer) = io::pipe().unwrap();
        drop(reader);
        let raw = writer.write(b"x").unwrap_err();
        assert_eq!(raw.kind(), io::ErrorKind::BrokenPipe);
        let e = write_to(&mut writer, format_args!("{}\n", 42)).unwrap_err();
        assert!(matches!(e, OutputError::Closed), "{e:?}");
        assert!(is_closed_stdout(&anyhow::Error::from(e).context("status")));
        let other = anyhow::Error::from(OutputError::from(io::Error::other("disk")));
        assert!(!is_closed_stdout(&other));
    }
}
