//! How a writer fails, and what each failure leads to.

/// Why a writer stopped with an error, and so its exit code.
#[derive(Debug)]
pub enum RunError {
    /// It can never work as configured: one line on stderr, exit code 2.
    Config(String),
    /// It failed while running: logged, exit code 1.
    Runtime(String),
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Config(_) => 2,
            RunError::Runtime(_) => 1,
        }
    }
}
