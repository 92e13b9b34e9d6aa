//! dimstore transports: the transport trait and its implementations
