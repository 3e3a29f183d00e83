//! The conformance suite on the in-memory store, directly and through `Arc<dyn Store>`.

mod memory {
    statebase_core::conformance_suite!(statebase_core::testing::MemoryFactory::default());
}

mod memory_dyn {
    statebase_core::conformance_suite!(statebase_core::testing::DynFactory(
        statebase_core::testing::MemoryFactory::default()
    ));
}
