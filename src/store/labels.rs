//! States stored as text: one enum per column, each value with one label that is what the
//! store holds, status shows and metrics count. A typo in a state is a compile error, and a
//! label the store does not know is an error when it is read, never a silent miscount.

use serde::Serialize;

/// Declares a state enum (every one has a `#[default]` variant) with its labels, `ALL`, `parse`, `Display`, `ToSql` and `FromSql`.
macro_rules! labelled {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $label:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }

            pub fn parse(s: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| v.label() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.label())
            }
        }

        impl rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.label().into())
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(
                v: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                let s = v.as_str()?;
                $name::parse(s).ok_or_else(|| {
                    rusqlite::types::FromSqlError::Other(
                        format!(concat!("unknown ", $what, " {:?}"), s).into(),
                    )
                })
            }
        }
    };
}

labelled! {
    /// Where a link is in its life (SPEC §2). Only `Active` links sync; the others are kept
    /// for status and history.
    pub enum LinkState ("link state") {
        #[default]
        Active = "active",
        /// A HubSpot rep excluded the partner from the deal.
        Excluded = "excluded",
        ClosedWon = "closed_won",
        ClosedLost = "closed_lost",
        /// One of its deals was deleted or archived.
        Orphaned = "orphaned",
    }
}

labelled! {
    /// Where a message pair or a linked file is (`engine::messages` decides every move).
    pub enum ObjectState ("object state") {
        /// Not recorded yet: a message seen for the first time (never stored as such).
        #[default]
        New = "new",
        /// A copy is being written: recorded before the write, so a crash finds it.
        Creating = "creating",
        /// Both sides exist and sync.
        Active = "active",
        /// One side was deleted, and so was the other.
        Removed = "removed",
        /// The original was made private; its copy was removed.
        Unshared = "unshared",
        /// The copy was made private: nothing syncs or is deleted any more.
        Detached = "detached",
        /// A HubSpot-side message on a deal with several partners names none of them.
        NeedsTarget = "needs_target",
        /// The message belongs to another partner of the HubSpot deal.
        Elsewhere = "elsewhere",
        /// A file over the size limit: not copied, not tried again.
        Skipped = "skipped",
        /// A file the portal would not serve: not copied, not tried again.
        Unreadable = "unreadable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_parses_back_and_labels_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for s in LinkState::ALL {
            assert_eq!(LinkState::parse(s.label()), Some(*s));
            assert!(seen.insert(s.label()));
        }
        seen.clear();
        for s in ObjectState::ALL {
            assert_eq!(ObjectState::parse(s.label()), Some(*s));
            assert!(seen.insert(s.label()));
        }
        assert_eq!(ObjectState::parse("actve"), None);
    }
}
