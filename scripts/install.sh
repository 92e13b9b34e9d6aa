#!/usr/bin/env bash
# Builds dimstore and installs it under PREFIX for C, C++ and Fortran programs:
#
#   PREFIX/bin/            dimstore-server, dimstore, dimstore-launch
#   PREFIX/lib/            libdimstore.so, libdimstore.a
#   PREFIX/lib/pkgconfig/  dimstore.pc (shared), dimstore-static.pc (libdimstore.a)
#   PREFIX/include/        dimstore.h, dimstore.mod (the Fortran module, built with gfortran)
#   PREFIX/share/dimstore/ dimstore.f90 (the module's source, for other Fortran compilers)
#
# Then:  export PKG_CONFIG_PATH=PREFIX/lib/pkgconfig
#        cc app.c $(pkg-config --cflags --libs dimstore)
#        mpif90 app.f90 $(pkg-config --cflags --libs dimstore)
#        CMake: pkg_check_modules(DIMSTORE REQUIRED dimstore)
#
# usage: scripts/install.sh [--profile release|dev] [--no-build] PREFIX
#   --profile  cargo profile to build and install (default release; dev reuses a debug build)
#   --no-build install what target/ holds without running cargo
# Idempotent: running it again replaces the files with the current build.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

profile=release
build=1
prefix=
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile=${2:?--profile needs release or dev}; shift ;;
        --profile=*) profile=${1#--profile=} ;;
        --no-build) build=0 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "install.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
        *) [ -z "$prefix" ] || { echo "install.sh: one PREFIX only" >&2; exit 2; }; prefix=$1 ;;
    esac
    shift
done
[ -n "$prefix" ] || { usage >&2; exit 2; }
case "$profile" in
    release) target_dir=target/release ;;
    dev|debug) profile=dev; target_dir=target/debug ;;
    *) echo "install.sh: --profile is release or dev, not $profile" >&2; exit 2 ;;
esac

log() { printf 'install.sh: %s\n' "$*"; }

static_libs_file=$target_dir/dimstore-native-static-libs
if [ "$build" = 1 ]; then
    log "building the binaries and libdimstore ($profile)"
    cargo build --locked --profile "$profile" -p dimstore-server -p dimstore -p dimstore-launch --bins
    # The system libraries libdimstore.a needs (Rust's std, UCX, libfabric, ...), as rustc
    # reports them for this build.
    build_log=$target_dir/dimstore-c-build.log
    cargo rustc --locked --profile "$profile" -p dimstore-c --lib -- --print native-static-libs \
        >"$build_log" 2>&1 || { cat "$build_log" >&2; exit 1; }
    sed -n 's/.*native-static-libs: //p' "$build_log" | tail -n 1 >"$static_libs_file"
    [ -s "$static_libs_file" ] || { cat "$build_log" >&2; echo "install.sh: rustc printed no native-static-libs" >&2; exit 1; }
fi
for f in dimstore-server dimstore dimstore-launch libdimstore.so libdimstore.a; do
    [ -f "$target_dir/$f" ] || { echo "install.sh: $target_dir/$f is missing (build first)" >&2; exit 1; }
done
[ -s "$static_libs_file" ] || { echo "install.sh: $static_libs_file is missing (build first)" >&2; exit 1; }
static_libs=$(cat "$static_libs_file")

mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
install -d "$prefix/bin" "$prefix/lib/pkgconfig" "$prefix/include" "$prefix/share/dimstore"
install -m 0755 "$target_dir/dimstore-server" "$target_dir/dimstore" "$target_dir/dimstore-launch" "$prefix/bin/"
install -m 0755 "$target_dir/libdimstore.so" "$prefix/lib/"
install -m 0644 "$target_dir/libdimstore.a" "$prefix/lib/"
install -m 0644 bindings/c/include/dimstore.h "$prefix/include/"
install -m 0644 bindings/c/fortran/dimstore.f90 "$prefix/share/dimstore/"

if command -v gfortran >/dev/null 2>&1; then
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    gfortran -std=f2008 -Wall -Werror -c bindings/c/fortran/dimstore.f90 -J "$scratch" -o "$scratch/dimstore.o"
    install -m 0644 "$scratch/dimstore.mod" "$prefix/include/"
else
    log "gfortran not found: dimstore.mod not built (compile share/dimstore/dimstore.f90 yourself)"
fi

common="prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include
bindir=\${prefix}/bin

Version: $version
Cflags: -I\${includedir}"

cat >"$prefix/lib/pkgconfig/dimstore.pc" <<EOF
$common
Name: dimstore
Description: dimstore client library (node-local in-memory object store fleet), shared
Libs: -L\${libdir} -Wl,-rpath,\${libdir} -ldimstore
Libs.private: $static_libs
EOF

cat >"$prefix/lib/pkgconfig/dimstore-static.pc" <<EOF
$common
Name: dimstore-static
Description: dimstore client library (node-local in-memory object store fleet), static
Libs: \${libdir}/libdimstore.a $static_libs
EOF

log "installed dimstore $version into $prefix"
log "use it with: export PKG_CONFIG_PATH=$prefix/lib/pkgconfig; cc app.c \$(pkg-config --cflags --libs dimstore)"
