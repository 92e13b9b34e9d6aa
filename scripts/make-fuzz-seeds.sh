#!/usr/bin/env bash
# Regenerates the fuzz seed corpus fuzz/seeds/<target>/ from real encoded frames (every
# request and response variant) with fuzz/examples/make_seeds.rs, then checks that every seed
# decodes (proto/tests/fuzz_seeds.rs). Run after changing the wire format and commit the
# result. The fuzz crate is its own workspace (fuzz/Cargo.toml); the example is a plain build,
# no fuzzing flags or nightly features needed.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
cargo run --quiet --manifest-path fuzz/Cargo.toml --target-dir fuzz/target --example make_seeds -- "$repo/fuzz/seeds"
cargo test --quiet -p dimstore-proto --test fuzz_seeds
git status --short -- fuzz/seeds
