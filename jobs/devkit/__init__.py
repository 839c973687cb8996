"""Not production code: the synthetic data generator and the crash hook the fault tests use."""
