//! The chaos suite's harness: real processes, the partitionable agent proxy, and the
//! scenario driver.

pub(crate) mod processes;
pub(crate) mod proxy;
pub(crate) mod scenario;
