//! dimstore integration and transport test suites
