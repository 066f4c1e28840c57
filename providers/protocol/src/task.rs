//! The `Task` trait ties a task name to its argument and result types, and [`TaskInfo`] makes the
//! whole set enumerable (for `cerana task list`, documentation, and argument checks in the
//! coordinator).

use crate::names::TaskName;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A named task with typed arguments and result.
///
/// Rolling upgrades: a node is strict about what it *accepts* and tolerant about what it
/// *receives back*. `Args` types, and every type nested in them, carry
/// `#[serde(deny_unknown_fields)]`, so a misspelt or unsupported argument is refused with
/// `invalid_args` instead of being ignored. `Output` types, and every type nested in them, do
/// not: a newer node may add a result field and an older caller still decodes the result (the
/// field is dropped). A type used on both sides stays strict and says why where it is declared.
pub trait Task {
    const NAME: &'static str;
    const ACCESS: Access;
    const DESCRIPTION: &'static str;
    type Args: Serialize + DeserializeOwned + Send + Sync + 'static;
    type Output: Serialize + DeserializeOwned + Send + Sync + 'static;

    fn name() -> TaskName {
        TaskName::new(Self::NAME).expect("declared task names are valid")
    }
}

/// What running a task does, and so which credentials may run it: a `read` credential runs
/// `Read` tasks only, an `operator` one `Read` and `Write`, an `admin` one everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Looks and changes nothing: facts, lists, logs, metrics, the journal.
    Read,
    /// Changes the node or the cluster, or makes the node act on the network (a probe that
    /// sends bytes to an address the caller names).
    Write,
    /// Manages credentials. A result may hold a secret shown once, so coordinators never keep
    /// these results in their journal.
    Admin,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task's entry in the catalog.
#[derive(Debug, Clone, Copy)]
pub struct TaskInfo {
    pub name: &'static str,
    pub access: Access,
    pub description: &'static str,
    /// Checks raw JSON arguments against the task's argument type.
    pub check_args: fn(&str) -> Result<(), String>,
}

/// Declares tasks: a unit type per task implementing [`Task`], and a `TASKS` list for the catalog.
///
/// ```text
/// declare_tasks! {
///     NodeInfo = "node-info", Read, "Facts about this node", NodeInfoArgs => NodeInfoResult;
/// }
/// ```
#[macro_export]
macro_rules! declare_tasks {
    ($( $ty:ident = $name:literal, $access:ident, $desc:literal, $args:ty => $out:ty; )*) => {
        $(
            #[doc = $desc]
            #[derive(Debug, Clone, Copy)]
            pub struct $ty;
            impl $crate::Task for $ty {
                const NAME: &'static str = $name;
                const ACCESS: $crate::Access = $crate::Access::$access;
                const DESCRIPTION: &'static str = $desc;
                type Args = $args;
                type Output = $out;
            }
        )*
        /// Every task this module declares.
        pub const TASKS: &[$crate::TaskInfo] = &[$(
            $crate::TaskInfo {
                name: $name,
                access: $crate::Access::$access,
                description: $desc,
                check_args: |raw| {
                    $crate::__serde_json::from_str::<$args>(raw).map(|_| ()).map_err(|e| e.to_string())
                },
            },
        )*];
    };
}

/// Arguments of a task that takes none: `{}` only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// Result of a task that returns nothing: `{}`, from a newer node possibly with fields this
/// version ignores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NoOutput {}
