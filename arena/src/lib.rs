//! Object memory for dimstore: memfd-backed segments and an allocator
