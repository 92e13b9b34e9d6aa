//! dimstore benchmarks
