//! Secrets read from the environment, files or systemd credentials: tokens, webhook and
//! client secrets. A [`Secret`] never shows its value through `Debug` or `Display`, so a
//! secret inside a config, an error or a log line prints as `[redacted]`; only
//! [`Secret::expose`], at the point of use, gives the value.

/// A secret value. Debug and Display never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value read from somewhere other than the config (tests, embedding programs).
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}
