#!/usr/bin/env bash
# Regenerates the fuzz seed corpus fuzz/seeds/<target>/ (frame_decoder, header,
# server_requests) from real encoded frames, every request and response variant, with
# fuzz/examples/make_seeds.rs, then checks that every seed decodes (proto/tests/fuzz_seeds.rs)
# and shows what changed. Run after changing the wire format and commit fuzz/seeds/.
# The example is a plain build of the fuzz crate (its own workspace, fuzz/target): no fuzzing
# flags, no nightly features, no root.
#
#   scripts/make-fuzz-seeds.sh
set -euo pipefail

case "${1:-}" in
    -h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    '') ;;
    *) echo "make-fuzz-seeds.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
esac

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
cargo run --quiet --manifest-path fuzz/Cargo.toml --target-dir fuzz/target \
    --example make_seeds -- "$repo/fuzz/seeds"
cargo test --quiet -p dimstore-proto --test fuzz_seeds
git status --short -- fuzz/seeds
