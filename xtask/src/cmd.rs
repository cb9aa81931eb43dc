//! Running commands: each step is announced, timed, and a failure names the
//! step so the output says what broke.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// A `cargo` command in the workspace root, using the cargo that runs xtask.
pub fn cargo(root: &Path) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = Command::new(cargo);
    c.current_dir(root);
    c
}

/// A named step of a task.
pub struct Step {
    name: String,
}

impl Step {
    /// A step called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Step { name: name.into() }
    }

    /// Runs `command`, inheriting stdout and stderr; fails unless it exits 0.
    pub fn run(&self, command: &mut Command) -> Result<(), String> {
        eprintln!("\n==> {}", self.name);
        let started = Instant::now();
        let status = command.status().map_err(|e| {
            format!(
                "{}: cannot start {:?}: {e}",
                self.name,
                command.get_program()
            )
        })?;
        eprintln!("<== {} ({:.1?})", self.name, started.elapsed());
        if status.success() {
            Ok(())
        } else {
            Err(format!("step failed: {} ({status})", self.name))
        }
    }
}

/// Runs `command` quietly and returns its stdout if it exits 0.
pub fn output(command: &mut Command) -> Option<String> {
    let out = command.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether this process runs as root (so apt-get may be used).
pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}
