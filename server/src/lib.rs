//! The dimstore per-node storage server
