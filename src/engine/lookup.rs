//! The CEL function `lookup(apiVersion, kind, namespace, name)`: joins across kinds (e.g.
//! RoleBinding → Role) against the same cached objects the metric observes.
//!
//! The interpreter calls functions without any application state, so the current evaluation's
//! index is installed in a thread-local for the duration of one metric's evaluation.

use std::cell::RefCell;

use cel::common::types::CelNull;
use cel::common::value::{CowVal, Val};
use cel::{ExecutionError, FunctionContext};

use super::objects::{Kind, ObjectIndex, ObjectKey};

/// What `lookup` may see during one evaluation.
pub struct LookupScope {
    /// The objects.
    pub index: ObjectIndex,
    /// When set, only objects in this namespace are visible (tenant confinement, SPEC §3).
    pub confine_to: Option<String>,
}

impl LookupScope {
    /// `index`, confined to one namespace when `confine_to` is set.
    pub fn new(index: &ObjectIndex, confine_to: Option<&str>) -> Self {
        LookupScope { index: index.clone(), confine_to: confine_to.map(String::from) }
    }
}

thread_local! {
    static SCOPE: RefCell<Option<LookupScope>> = const { RefCell::new(None) };
}

/// Runs `f` with `scope` visible to `lookup` on this thread.
pub fn with_scope<R>(scope: LookupScope, f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            SCOPE.with(|s| *s.borrow_mut() = None);
        }
    }
    SCOPE.with(|s| *s.borrow_mut() = Some(scope));
    let _reset = Reset;
    f()
}

fn arg_str<'a>(args: &'a [CowVal<'_, '_>], i: usize) -> Result<&'a str, ExecutionError> {
    <&str>::try_from(args[i].as_ref())
        .map_err(|_| ExecutionError::function_error("lookup", format!("argument {} must be a string", i + 1)))
}

/// The shape `cel` registers functions as (its own alias for it is private).
pub(super) type Function = Box<
    dyn for<'c, 'call> Fn(&mut FunctionContext<'c, 'call>) -> Result<CowVal<'c, 'call>, ExecutionError>
        + Send
        + Sync,
>;

pub(super) fn lookup_function() -> Function {
    Box::new(|ftx: &mut FunctionContext<'_, '_>| {
        if ftx.args.len() != 4 {
            return Err(ExecutionError::invalid_argument_count(4, ftx.args.len()));
        }
        let kind = Kind::new(arg_str(&ftx.args, 0)?, arg_str(&ftx.args, 1)?);
        let key = ObjectKey { namespace: arg_str(&ftx.args, 2)?.into(), name: arg_str(&ftx.args, 3)?.into() };
        let found: Option<Box<dyn Val>> = SCOPE.with(|s| {
            let s = s.borrow();
            let scope = s.as_ref()?;
            if scope.confine_to.as_ref().is_some_and(|ns| **ns != *key.namespace) {
                return None;
            }
            scope.index.get(&kind, &key).map(|o| o.node.to_val())
        });
        Ok(CowVal::Owned(found.unwrap_or_else(|| Box::new(CelNull))))
    })
}
