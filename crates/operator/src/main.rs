//! The `gantry-operator` binary.

fn main() {}
