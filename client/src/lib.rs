//! dimstore client: Store, keys, proxies, elastic spawn
