//! Placeholder: this crate is planned (see the project's open issues) and holds no code yet.
//! The conformance suite in `statebase-core` (feature `testing`) is what it will pass.
